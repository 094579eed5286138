//! `ModifyInstanceAttribute`: one request names one attribute to change,
//! either as its own member (`Groups`, `SourceDestCheck`, …) or as
//! `Attribute` + `Value`. Each attribute is one arm of
//! [`Service::modify_instance_attribute`]; amirun changes `groupSet` so far,
//! and refuses the others by name rather than ignoring them. Add an
//! attribute by adding its member to the request and an arm to the match.

use super::vpc::dry_run;
use super::{Caller, Error, ErrorCode, Result, Service};
use serde::Deserialize;

/// `{Value: …}` wrappers of the request's attribute members.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct AttributeBooleanValue {
    #[serde(default)]
    pub value: Option<bool>,
}

/// `ModifyInstanceAttribute`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ModifyInstanceAttributeRequest {
    pub instance_id: String,
    /// The attribute, when given by name (`groupSet`, …).
    #[serde(default)]
    pub attribute: Option<String>,
    /// Its value, for attributes given by name.
    #[serde(default)]
    pub value: Option<String>,
    /// `groupSet`: the security groups (replacing the current ones).
    #[serde(default)]
    pub groups: Vec<String>,
    /// `sourceDestCheck` (amirun keeps it on).
    #[serde(default)]
    pub source_dest_check: Option<AttributeBooleanValue>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

impl Service {
    /// `ModifyInstanceAttribute`.
    pub fn modify_instance_attribute(
        &mut self,
        caller: &Caller,
        req: ModifyInstanceAttributeRequest,
    ) -> Result<()> {
        dry_run(req.dry_run)?;
        let named = req.attribute.as_deref();
        let attribute = if !req.groups.is_empty() {
            "groupSet"
        } else if req.source_dest_check.is_some() {
            "sourceDestCheck"
        } else {
            named.ok_or_else(|| Error::missing("Attribute"))?
        };
        if named.is_some_and(|n| n != attribute) {
            return Err(Error::new(
                ErrorCode::InvalidParameterCombination,
                format!(
                    "Only one attribute can be changed per request: {} and {attribute} were given",
                    named.unwrap_or_default()
                ),
            ));
        }
        match attribute {
            "groupSet" => {
                let groups: Vec<String> = if req.groups.is_empty() {
                    req.value
                        .iter()
                        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
                        .filter(|s| !s.is_empty())
                        .collect()
                } else {
                    req.groups.clone()
                };
                self.set_instance_groups(caller, &req.instance_id, &groups)
            }
            "sourceDestCheck" => {
                let on = req
                    .source_dest_check
                    .and_then(|v| v.value)
                    .or_else(|| req.value.as_deref().map(|v| v == "true"))
                    .unwrap_or(true);
                self.owned_instances(caller, std::slice::from_ref(&req.instance_id))?;
                if on {
                    Ok(())
                } else {
                    Err(Error::new(
                        ErrorCode::UnsupportedOperation,
                        "amirun keeps the source/destination check on (instances do not route for others)",
                    ))
                }
            }
            other => Err(Error::new(
                ErrorCode::UnsupportedOperation,
                format!("amirun does not modify the instance attribute {other} yet"),
            )),
        }
    }
}
