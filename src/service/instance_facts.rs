//! Read-only facts about instances that EC2 serves as actions of their own:
//! `GetInstanceUefiData` (the instance's UEFI variable store) and
//! `DescribeInstanceCreditSpecifications` (CPU credit mode of burstable
//! types). Nothing here changes an instance.

use super::filter;
use super::shapes::Filter;
use super::{Caller, Error, ErrorCode, Result, Service};
use crate::domain::{BootMode, InstanceStateName};
use base64::Engine;
use serde::{Deserialize, Serialize};

/// `GetInstanceUefiData`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct GetInstanceUefiDataRequest {
    pub instance_id: String,
}

/// What `GetInstanceUefiData` returns: the variable store as base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetInstanceUefiDataResult {
    pub instance_id: String,
    pub uefi_data: String,
}

/// `DescribeInstanceCreditSpecifications`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeInstanceCreditSpecificationsRequest {
    #[serde(default)]
    pub instance_ids: Vec<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// Page size, 5 to 1000; not with `InstanceIds` (EC2's rule).
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// One instance's CPU credit mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceCreditSpecification {
    pub instance_id: String,
    pub cpu_credits: String,
}

/// What `DescribeInstanceCreditSpecifications` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeInstanceCreditSpecificationsResult {
    pub instance_credit_specifications: Vec<InstanceCreditSpecification>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// EC2's default credit mode for a burstable family: `standard` for t2,
/// `unlimited` for t3, t3a and t4g; `None` for types without CPU credits.
pub fn default_cpu_credits(instance_type: &str) -> Option<&'static str> {
    match instance_type.split('.').next() {
        Some("t2") => Some("standard"),
        Some("t3" | "t3a" | "t4g") => Some("unlimited"),
        _ => None,
    }
}

impl Service {
    /// `GetInstanceUefiData`: base64 of the instance's UEFI variable store.
    pub fn get_instance_uefi_data(
        &mut self,
        caller: &Caller,
        input: GetInstanceUefiDataRequest,
    ) -> Result<GetInstanceUefiDataResult> {
        let instance_id = input.instance_id.as_str();
        let i = self
            .owned_instances(caller, &[instance_id.to_string()])?
            .remove(0);
        if i.boot_mode != BootMode::Uefi {
            return Err(Error::new(
                ErrorCode::UnsupportedOperation,
                format!(
                    "The instance '{instance_id}' boots in {} mode and has no UEFI data; only uefi instances have a UEFI variable store",
                    i.boot_mode
                ),
            ));
        }
        let path = self.paths.uefi_vars(instance_id);
        let data = std::fs::read(&path).map_err(|e| {
            Error::incorrect_instance_state(format!(
                "The instance '{instance_id}' has no UEFI variable store ({}); it is {}",
                path.display(),
                i.state
            ))
            .with_source(e)
        })?;
        Ok(GetInstanceUefiDataResult {
            instance_id: instance_id.to_string(),
            uefi_data: base64::engine::general_purpose::STANDARD.encode(data),
        })
    }

    /// `DescribeInstanceCreditSpecifications`: the named instances (which
    /// must be burstable), or every burstable instance of the caller.
    pub fn describe_instance_credit_specifications(
        &mut self,
        caller: &Caller,
        input: DescribeInstanceCreditSpecificationsRequest,
    ) -> Result<DescribeInstanceCreditSpecificationsResult> {
        let (instance_ids, filters) = (&input.instance_ids, &input.filters);
        if !instance_ids.is_empty() && input.max_results.is_some() {
            return Err(Error::new(
                ErrorCode::InvalidParameterCombination,
                "The parameter instancesSet cannot be used with the parameter maxResults",
            ));
        }
        filter::check_names(filters, &["instance-id"])?;
        let instances = if instance_ids.is_empty() {
            self.store
                .read(|db| db.instances_in_region(&caller.region))?
                .into_iter()
                .filter(|i| {
                    i.region == caller.region
                        && i.owner_id == caller.account
                        && i.state != InstanceStateName::Terminated
                        && default_cpu_credits(&i.instance_type).is_some()
                })
                .collect()
        } else {
            self.owned_instances(caller, instance_ids)?
        };
        let mut out = Vec::new();
        for i in instances {
            let credits = default_cpu_credits(&i.instance_type).ok_or_else(|| {
                Error::new(
                    ErrorCode::UnsupportedOperation,
                    format!(
                        "The instance '{}' is a {}, not a burstable performance instance (T2, T3, T3a, T4g); it has no CPU credit specification",
                        i.instance_id, i.instance_type
                    ),
                )
            })?;
            if filter::matches(filters, |_| vec![i.instance_id.clone()]) {
                out.push(InstanceCreditSpecification {
                    instance_id: i.instance_id,
                    cpu_credits: credits.to_string(),
                });
            }
        }
        let paging = super::paging::Paging::of(input.max_results, &input.next_token);
        let (instance_credit_specifications, next_token) =
            super::paging::page(out, &paging, 5, 1000)?;
        Ok(DescribeInstanceCreditSpecificationsResult {
            instance_credit_specifications,
            next_token,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn burstable_defaults_are_ec2s() {
        assert_eq!(super::default_cpu_credits("t2.micro"), Some("standard"));
        assert_eq!(super::default_cpu_credits("t3.nano"), Some("unlimited"));
        assert_eq!(super::default_cpu_credits("t3a.large"), Some("unlimited"));
        assert_eq!(super::default_cpu_credits("t4g.micro"), Some("unlimited"));
        assert_eq!(super::default_cpu_credits("m1.small"), None);
        assert_eq!(super::default_cpu_credits("t1.micro"), None);
    }
}
