//! botocore's EC2 model: the one source of names and types on both front ends.
//!
//! `ec2_model.json` is the slice of botocore's `service-2.json` that amirun
//! serves (written by `scripts/gen-ec2-model.py`): operations, their input
//! and output shapes, member names, XML names (`locationName`,
//! `queryName`) and types. The HTTP API reads requests and writes responses
//! by it ([`crate::http::model`]); the CLI derives its options from it.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The operations and shapes amirun uses from botocore's EC2 model.
#[derive(Debug, Deserialize)]
pub struct Model {
    /// Which botocore file this came from.
    pub source: String,
    /// Operation name to its input and output shapes.
    pub operations: BTreeMap<String, Operation>,
    /// Shape name to shape.
    pub shapes: BTreeMap<String, Shape>,
}

/// One operation's shapes.
#[derive(Debug, Deserialize)]
pub struct Operation {
    #[serde(default)]
    pub input: Option<String>,
    #[serde(default)]
    pub output: Option<String>,
}

/// A reference to a shape from a structure member or list.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShapeRef {
    pub shape: String,
    #[serde(default)]
    pub location_name: Option<String>,
    #[serde(default)]
    pub query_name: Option<String>,
}

/// A shape: structure, list, map or scalar.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Shape {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub members: BTreeMap<String, ShapeRef>,
    #[serde(default)]
    pub member: Option<ShapeRef>,
    #[serde(default)]
    pub flattened: bool,
}

/// The embedded model, parsed once.
pub fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        serde_json::from_str(include_str!("ec2_model.json"))
            .expect("src/api/ec2_model.json is botocore's model")
    })
}

impl Model {
    pub fn shape(&self, name: &str) -> &Shape {
        self.shapes
            .get(name)
            .unwrap_or_else(|| panic!("shape {name} missing from ec2_model.json"))
    }
}
