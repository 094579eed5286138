//! Shapes of EC2's model shared by several operations (Tag, Filter,
//! TagSpecification, StateReason, DiskContainer), in botocore's names.
//! Each operation's own request and result live with the operation.
//!
//! Results serialize to exactly the JSON the aws CLI prints (PascalCase
//! keys, absent optionals omitted). Requests deserialize from the same
//! names and refuse members they do not know, so the CLI's JSON/shorthand
//! options and the HTTP API's parameters map onto them without
//! translation tables ([`crate::api::request`]).

use serde::{Deserialize, Deserializer, Serialize};

/// A value that may be given as one item or a list (shorthand `Values=a`).
pub fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        Many(Vec<T>),
        One(T),
    }
    Ok(match Option::<OneOrMany<T>>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::Many(v)) => v,
        Some(OneOrMany::One(v)) => vec![v],
    })
}

/// A describe filter: `Name=…,Values=…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Filter {
    pub name: String,
    #[serde(default, deserialize_with = "one_or_many")]
    pub values: Vec<String>,
}

/// A tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
}

impl From<&crate::store::TagState> for Tag {
    /// A stored tag as EC2 shows it.
    fn from(t: &crate::store::TagState) -> Tag {
        Tag {
            key: t.key.clone(),
            value: Some(t.value.clone()),
        }
    }
}

/// Tags to put on resources created by an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TagSpecification {
    pub resource_type: String,
    #[serde(default, deserialize_with = "one_or_many")]
    pub tags: Vec<Tag>,
}

/// Why an image is in its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StateReason {
    pub code: String,
    pub message: String,
}

/// One disk of an import (EC2's `ImageDiskContainer`; `UserBucket`, an S3
/// location, is not a member: amirun reads `Url`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DiskContainer {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub device_name: Option<String>,
    #[serde(default)]
    pub snapshot_id: Option<String>,
}
