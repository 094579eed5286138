//! `DescribeInstanceAttribute` and `ModifyInstanceAttribute`: the instance
//! attributes EC2 has, one per call, with EC2's rules about when each may
//! change. Packer sets `enaSupport`/`sriovNetSupport` on a stopped instance
//! before it bakes; Ansible's `ec2_instance` reads and sets
//! `disableApiTermination`, `instanceInitiatedShutdownBehavior` and
//! `instanceType`; both compare `userData` and `blockDeviceMapping`.
//!
//! - Fields of the instance record (`instanceType`, `userData`,
//!   `instanceInitiatedShutdownBehavior`, DeleteOnTermination of its EBS
//!   mappings) change there; `instanceType`, `userData`, `enaSupport`,
//!   `sriovNetSupport` and `ebsOptimized` only while the instance is
//!   `stopped` (`IncorrectInstanceState` otherwise), and the next start
//!   boots with them.
//! - The rest are kept as attributes of their own in the store
//!   (`disableApiTermination` and `disableApiStop` are enforced by
//!   TerminateInstances and StopInstances with `OperationNotPermitted`;
//!   `enaSupport`, `sriovNetSupport`, `ebsOptimized` and `sourceDestCheck`
//!   are accepted and shown, the virtual NIC being virtio whatever they say).
//! - `kernel`, `ramdisk`, `rootDeviceName` and `productCodes` are read-only.
//! - `groupSet` is the VPC model's (security groups); its arms below are
//!   where that code plugs in.

use super::object_lock;
use super::{now, Caller, Error, ErrorCode, Result, Service};
use crate::domain::{InstanceStateName, ShutdownBehavior};
use crate::store::InstanceState;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// `AttributeValue`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct AttributeValue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `AttributeBooleanValue`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct AttributeBooleanValue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<bool>,
}

/// `EbsInstanceBlockDeviceSpecification`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct EbsInstanceBlockDeviceSpecification {
    #[serde(default)]
    pub volume_id: Option<String>,
    #[serde(default)]
    pub delete_on_termination: Option<bool>,
}

/// `InstanceBlockDeviceMappingSpecification`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct InstanceBlockDeviceMappingSpecification {
    #[serde(default)]
    pub device_name: Option<String>,
    #[serde(default)]
    pub ebs: Option<EbsInstanceBlockDeviceSpecification>,
    #[serde(default)]
    pub virtual_name: Option<String>,
    #[serde(default)]
    pub no_device: Option<String>,
}

/// `DescribeInstanceAttribute` input.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeInstanceAttributeRequest {
    pub instance_id: String,
    pub attribute: String,
}

/// `ModifyInstanceAttribute` input: one attribute, named either by
/// `Attribute` + `Value` or by its own member.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ModifyInstanceAttributeRequest {
    pub instance_id: String,
    #[serde(default)]
    pub attribute: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub source_dest_check: Option<AttributeBooleanValue>,
    #[serde(default)]
    pub disable_api_stop: Option<AttributeBooleanValue>,
    #[serde(default)]
    pub disable_api_termination: Option<AttributeBooleanValue>,
    #[serde(default)]
    pub ebs_optimized: Option<AttributeBooleanValue>,
    #[serde(default)]
    pub ena_support: Option<AttributeBooleanValue>,
    #[serde(default)]
    pub instance_type: Option<AttributeValue>,
    #[serde(default)]
    pub kernel: Option<AttributeValue>,
    #[serde(default)]
    pub ramdisk: Option<AttributeValue>,
    #[serde(default)]
    pub instance_initiated_shutdown_behavior: Option<AttributeValue>,
    #[serde(default)]
    pub sriov_net_support: Option<AttributeValue>,
    /// `SecureBlobAttributeValue`: base64 on the wire.
    #[serde(default)]
    pub user_data: Option<AttributeValue>,
    #[serde(default)]
    pub block_device_mappings: Vec<InstanceBlockDeviceMappingSpecification>,
    /// Security group ids (`GroupId.N`).
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `InstanceBlockDeviceMapping` with its `EbsInstanceBlockDevice`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceBlockDeviceMapping {
    pub device_name: String,
    pub ebs: Value,
}

/// `GroupIdentifier`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GroupIdentifier {
    pub group_id: String,
    pub group_name: String,
}

/// `DescribeInstanceAttribute` output (botocore's `InstanceAttribute`):
/// the instance id and the one attribute asked for.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceAttribute {
    pub instance_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_device_mappings: Option<Vec<InstanceBlockDeviceMapping>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disable_api_termination: Option<AttributeBooleanValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disable_api_stop: Option<AttributeBooleanValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ena_support: Option<AttributeBooleanValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enclave_options: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ebs_optimized: Option<AttributeBooleanValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_initiated_shutdown_behavior: Option<AttributeValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<AttributeValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_id: Option<AttributeValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_codes: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ramdisk_id: Option<AttributeValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_device_name: Option<AttributeValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_dest_check: Option<AttributeBooleanValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sriov_net_support: Option<AttributeValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<AttributeValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<GroupIdentifier>>,
}

/// The default of an attribute kept in the store beside the record.
fn stored_default(name: &str) -> Value {
    match name {
        "disableApiTermination" | "disableApiStop" | "enaSupport" | "ebsOptimized" => json!(false),
        "sourceDestCheck" => json!(true),
        _ => Value::Null,
    }
}

/// One change asked for, in EC2's attribute names.
#[derive(Debug, Clone, PartialEq)]
enum Change {
    InstanceType(String),
    UserData(Vec<u8>),
    ShutdownBehavior(ShutdownBehavior),
    /// disableApiTermination, disableApiStop, enaSupport, ebsOptimized, sourceDestCheck.
    Flag(&'static str, bool),
    SriovNetSupport(String),
    DeleteOnTermination(Vec<(String, bool)>),
    Groups(Vec<String>),
    ReadOnly(&'static str),
}

fn bool_value(name: &str, v: &str) -> Result<bool> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Error::invalid_value(format!(
            "Value ({v}) for parameter {name} is invalid. Expected 'true' or 'false'."
        ))),
    }
}

fn flag_name(attribute: &str) -> Option<&'static str> {
    [
        "disableApiTermination",
        "disableApiStop",
        "enaSupport",
        "ebsOptimized",
        "sourceDestCheck",
    ]
    .into_iter()
    .find(|n| *n == attribute)
}

fn required<T>(name: &str, v: Option<T>) -> Result<T> {
    v.ok_or_else(|| Error::missing(&format!("{name}.Value")))
}

fn decode_user_data(b64: &str) -> Result<Vec<u8>> {
    let data = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| Error::invalid_value("Invalid BASE64 encoding of user data").with_source(e))?;
    if data.len() > super::instances::USER_DATA_LIMIT {
        return Err(Error::invalid_value(format!(
            "User data is limited to {} bytes (this is {} bytes after base64 decoding)",
            super::instances::USER_DATA_LIMIT,
            data.len()
        )));
    }
    Ok(data)
}

impl ModifyInstanceAttributeRequest {
    /// The one change this request asks for.
    fn change(&self) -> Result<Change> {
        let mut changes: Vec<(&str, Change)> = Vec::new();
        if let Some(attribute) = &self.attribute {
            let value = || self.value.clone().ok_or_else(|| Error::missing("Value"));
            let c = match attribute.as_str() {
                "instanceType" => Change::InstanceType(value()?),
                "userData" => Change::UserData(decode_user_data(&value()?)?),
                "instanceInitiatedShutdownBehavior" => {
                    Change::ShutdownBehavior(shutdown_behavior(&value()?)?)
                }
                "sriovNetSupport" => Change::SriovNetSupport(value()?),
                a if flag_name(a).is_some() => {
                    let name = flag_name(a).expect("checked");
                    Change::Flag(name, bool_value(name, &value()?)?)
                }
                "kernel" => Change::ReadOnly("kernel"),
                "ramdisk" => Change::ReadOnly("ramdisk"),
                "rootDeviceName" | "productCodes" | "enclaveOptions" => {
                    return Err(Error::invalid_value(format!(
                        "Value ({attribute}) for parameter attribute is invalid. The attribute cannot be modified."
                    )))
                }
                // As the VPC model reads it: a comma-separated list of ids.
                "groupSet" => Change::Groups(
                    value()?
                        .split(',')
                        .map(|g| g.trim().to_string())
                        .filter(|g| !g.is_empty())
                        .collect(),
                ),
                "blockDeviceMapping" => {
                    return Err(Error::invalid_value(
                        "Value (blockDeviceMapping) for parameter attribute is invalid. Use the BlockDeviceMapping parameter to modify it.",
                    ))
                }
                _ => {
                    return Err(Error::invalid_value(format!(
                        "Value ({attribute}) for parameter attribute is invalid. Unknown attribute."
                    )))
                }
            };
            changes.push((attribute.as_str(), c));
        } else if self.value.is_some() {
            return Err(Error::missing("Attribute"));
        }
        let flags = [
            ("sourceDestCheck", &self.source_dest_check),
            ("disableApiStop", &self.disable_api_stop),
            ("disableApiTermination", &self.disable_api_termination),
            ("ebsOptimized", &self.ebs_optimized),
            ("enaSupport", &self.ena_support),
        ];
        for (name, v) in flags {
            if let Some(v) = v {
                let name = flag_name(name).expect("a flag");
                changes.push((name, Change::Flag(name, required(name, v.value)?)));
            }
        }
        if let Some(v) = &self.instance_type {
            changes.push((
                "instanceType",
                Change::InstanceType(required("InstanceType", v.value.clone())?),
            ));
        }
        if let Some(v) = &self.user_data {
            let b64 = required("UserData", v.value.clone())?;
            changes.push(("userData", Change::UserData(decode_user_data(&b64)?)));
        }
        if let Some(v) = &self.instance_initiated_shutdown_behavior {
            let given = required("InstanceInitiatedShutdownBehavior", v.value.clone())?;
            changes.push((
                "instanceInitiatedShutdownBehavior",
                Change::ShutdownBehavior(shutdown_behavior(&given)?),
            ));
        }
        if let Some(v) = &self.sriov_net_support {
            changes.push((
                "sriovNetSupport",
                Change::SriovNetSupport(required("SriovNetSupport", v.value.clone())?),
            ));
        }
        if self.kernel.is_some() {
            changes.push(("kernel", Change::ReadOnly("kernel")));
        }
        if self.ramdisk.is_some() {
            changes.push(("ramdisk", Change::ReadOnly("ramdisk")));
        }
        if !self.block_device_mappings.is_empty() {
            let mut dot = Vec::new();
            for (n, m) in self.block_device_mappings.iter().enumerate() {
                let device = m.device_name.clone().ok_or_else(|| {
                    Error::missing(&format!("BlockDeviceMapping.{}.DeviceName", n + 1))
                })?;
                if m.virtual_name.is_some() || m.no_device.is_some() {
                    return Err(Error::new(
                        ErrorCode::InvalidParameterCombination,
                        format!("The block device mapping of {device} can only change DeleteOnTermination of an EBS volume"),
                    ));
                }
                let delete = m
                    .ebs
                    .as_ref()
                    .and_then(|e| e.delete_on_termination)
                    .ok_or_else(|| {
                        Error::missing(&format!(
                            "BlockDeviceMapping.{}.Ebs.DeleteOnTermination",
                            n + 1
                        ))
                    })?;
                dot.push((device, delete));
            }
            changes.push(("blockDeviceMapping", Change::DeleteOnTermination(dot)));
        }
        if !self.groups.is_empty() {
            changes.push(("groupSet", Change::Groups(self.groups.clone())));
        }
        match changes.len() {
            0 => Err(Error::missing("Attribute")),
            1 => Ok(changes.pop().expect("one").1),
            _ => Err(Error::new(
                ErrorCode::InvalidParameterCombination,
                format!(
                    "Fields for multiple attribute types specified: {}",
                    changes
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
}

fn shutdown_behavior(given: &str) -> Result<ShutdownBehavior> {
    given.parse::<ShutdownBehavior>().map_err(|_| {
        Error::invalid_value(format!(
            "Value ({given}) for parameter InstanceInitiatedShutdownBehavior is invalid; use stop or terminate"
        ))
    })
}

fn not_stopped(i: &InstanceState) -> Error {
    Error::incorrect_instance_state(format!(
        "The instance '{}' is not in the 'stopped' state.",
        i.instance_id
    ))
}

impl Service {
    /// The stored attribute `name` of an instance (its default when never set).
    fn stored_attribute(&mut self, instance_id: &str, name: &str) -> Result<Value> {
        let attrs = self.store.read(|db| db.instance_attributes(instance_id))?;
        Ok(attrs
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| stored_default(name)))
    }

    /// `OperationNotPermitted` when an instance's `disableApiTermination`
    /// (for `op` = "terminated") or `disableApiStop` ("stopped") is set.
    pub(crate) fn check_api_protection(
        &mut self,
        instances: &[InstanceState],
        op: &str,
    ) -> Result<()> {
        let attribute = if op == "terminated" {
            "disableApiTermination"
        } else {
            "disableApiStop"
        };
        for i in instances {
            if self.stored_attribute(&i.instance_id, attribute)? == json!(true) {
                return Err(Error::new(
                    ErrorCode::OperationNotPermitted,
                    format!(
                        "The instance '{}' may not be {op}. Modify its '{attribute}' instance attribute and try again.",
                        i.instance_id
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `DescribeInstanceAttribute`: one attribute of one instance.
    pub fn describe_instance_attribute(
        &mut self,
        caller: &Caller,
        input: DescribeInstanceAttributeRequest,
    ) -> Result<InstanceAttribute> {
        let i = self
            .owned_instances(caller, std::slice::from_ref(&input.instance_id))?
            .remove(0);
        let mut out = InstanceAttribute {
            instance_id: i.instance_id.clone(),
            ..InstanceAttribute::default()
        };
        let text = |v: Option<String>| Some(AttributeValue { value: v });
        let stored_bool = |s: &mut Service, name: &str| -> Result<Option<AttributeBooleanValue>> {
            Ok(Some(AttributeBooleanValue {
                value: s.stored_attribute(&i.instance_id, name)?.as_bool(),
            }))
        };
        match input.attribute.as_str() {
            "instanceType" => out.instance_type = text(Some(i.instance_type.clone())),
            "kernel" => out.kernel_id = text(None),
            "ramdisk" => out.ramdisk_id = text(None),
            "userData" => {
                out.user_data = text(
                    i.user_data
                        .as_ref()
                        .map(|u| base64::engine::general_purpose::STANDARD.encode(u)),
                )
            }
            "disableApiTermination" => {
                out.disable_api_termination = stored_bool(self, "disableApiTermination")?
            }
            "disableApiStop" => out.disable_api_stop = stored_bool(self, "disableApiStop")?,
            "enaSupport" => out.ena_support = stored_bool(self, "enaSupport")?,
            "ebsOptimized" => out.ebs_optimized = stored_bool(self, "ebsOptimized")?,
            "sourceDestCheck" => out.source_dest_check = stored_bool(self, "sourceDestCheck")?,
            "sriovNetSupport" => {
                out.sriov_net_support = text(
                    self.stored_attribute(&i.instance_id, "sriovNetSupport")?
                        .as_str()
                        .map(String::from),
                )
            }
            "instanceInitiatedShutdownBehavior" => {
                out.instance_initiated_shutdown_behavior =
                    text(Some(i.shutdown_behavior.to_string()))
            }
            "rootDeviceName" => out.root_device_name = text(Some(i.root_device_name.clone())),
            "productCodes" => out.product_codes = Some(Vec::new()),
            "enclaveOptions" => out.enclave_options = Some(json!({ "Enabled": false })),
            "blockDeviceMapping" => {
                out.block_device_mappings = Some(
                    i.devices
                        .iter()
                        .filter_map(|d| {
                            let vid = d.volume_id.as_ref()?;
                            Some(InstanceBlockDeviceMapping {
                                device_name: d.device_name.clone(),
                                ebs: json!({
                                    "AttachTime": d.attach_time,
                                    "DeleteOnTermination": d.delete_on_termination,
                                    "Status": "attached",
                                    "VolumeId": vid,
                                }),
                            })
                        })
                        .collect(),
                )
            }
            // The VPC model's security groups fill this in.
            "groupSet" => out.groups = Some(self.instance_groups(&i)?),
            other => {
                return Err(Error::invalid_value(format!(
                    "Value ({other}) for parameter attribute is invalid. Unknown attribute."
                )))
            }
        }
        Ok(out)
    }

    /// The security groups of an instance (`groupSet`); the VPC model owns them.
    fn instance_groups(&mut self, i: &InstanceState) -> Result<Vec<GroupIdentifier>> {
        let owner = Caller::new(i.owner_id.clone(), i.region.clone())?;
        Ok(self
            .instance_networks(&owner)?
            .remove(&i.instance_id)
            .map(|n| {
                n.groups
                    .into_iter()
                    .map(|(group_id, group_name)| GroupIdentifier {
                        group_id,
                        group_name,
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// `ModifyInstanceAttribute`: change one attribute, under the instance's lock.
    pub fn modify_instance_attribute(
        &mut self,
        caller: &Caller,
        input: ModifyInstanceAttributeRequest,
    ) -> Result<()> {
        let change = input.change()?;
        let _lock = object_lock::lock(&self.paths, &input.instance_id)?;
        let mut i = self
            .owned_instances(caller, std::slice::from_ref(&input.instance_id))?
            .remove(0);
        if matches!(
            i.state,
            InstanceStateName::Terminated | InstanceStateName::ShuttingDown
        ) {
            return Err(Error::incorrect_instance_state(format!(
                "The instance '{}' is {}; its attributes cannot change",
                i.instance_id, i.state
            )));
        }
        let stopped = i.state == InstanceStateName::Stopped;
        match change {
            Change::ReadOnly(name) => {
                return Err(Error::new(
                    ErrorCode::UnsupportedOperation,
                    format!(
                        "The {name} of instance '{}' cannot be modified: amirun instances are HVM and boot what their AMI names",
                        i.instance_id
                    ),
                ))
            }
            Change::InstanceType(t) => {
                if !stopped {
                    return Err(not_stopped(&i));
                }
                let itype = crate::machine::instance_type(&t).ok_or_else(|| {
                    Error::invalid_value(format!("Value ({t}) for parameter instanceType is invalid."))
                })?;
                if !itype.supports_architecture(i.architecture.as_str()) {
                    return Err(Error::invalid_value(format!(
                        "The instance type '{t}' does not support the architecture '{}' of instance '{}'",
                        i.architecture, i.instance_id
                    )));
                }
                i.instance_type = t;
                self.put_modified(&mut i)?;
            }
            Change::UserData(data) => {
                if !stopped {
                    return Err(not_stopped(&i));
                }
                i.user_data = (!data.is_empty()).then_some(data);
                self.rewrite_seed(&i)?;
                self.put_modified(&mut i)?;
            }
            Change::ShutdownBehavior(b) => {
                i.shutdown_behavior = b;
                self.put_modified(&mut i)?;
            }
            Change::Flag(name, value) => {
                if matches!(name, "enaSupport" | "ebsOptimized") && !stopped {
                    return Err(not_stopped(&i));
                }
                let id = i.instance_id.clone();
                self.store
                    .write(|db| db.set_instance_attribute(&id, name, &json!(value)))?;
            }
            Change::SriovNetSupport(v) => {
                if v != "simple" {
                    return Err(Error::invalid_value(format!(
                        "Value ({v}) for parameter sriovNetSupport is invalid. The only value is 'simple'."
                    )));
                }
                if !stopped {
                    return Err(not_stopped(&i));
                }
                let id = i.instance_id.clone();
                self.store
                    .write(|db| db.set_instance_attribute(&id, "sriovNetSupport", &json!(v)))?;
            }
            Change::DeleteOnTermination(wanted) => {
                for (device, _) in &wanted {
                    if !i
                        .devices
                        .iter()
                        .any(|d| &d.device_name == device && d.volume_id.is_some())
                    {
                        return Err(Error::new(
                            ErrorCode::InvalidInstanceAttributeValue,
                            format!(
                                "No device is currently mapped at {device} on instance '{}'",
                                i.instance_id
                            ),
                        ));
                    }
                }
                for d in i.devices.iter_mut() {
                    if let Some((_, delete)) = wanted.iter().find(|(n, _)| *n == d.device_name) {
                        d.delete_on_termination = *delete;
                    }
                }
                i.updated = now();
                let s = i.clone();
                self.store.write(|db| -> Result<()> {
                    db.put_instance(&s)?;
                    for d in &s.devices {
                        let Some(vid) = &d.volume_id else { continue };
                        if let Some(mut v) = db.volume(vid)? {
                            v.delete_on_termination = d.delete_on_termination;
                            db.put_volume(&v)?;
                        }
                    }
                    Ok(())
                })?;
            }
            Change::Groups(groups) => return self.modify_instance_groups(caller, &i, groups),
        }
        Ok(())
    }

    /// `groupSet`: replace an instance's security groups (the VPC model's,
    /// [`Service::set_instance_groups`], which applies them to the running guest).
    fn modify_instance_groups(
        &mut self,
        caller: &Caller,
        i: &InstanceState,
        groups: Vec<String>,
    ) -> Result<()> {
        self.set_instance_groups(caller, &i.instance_id, &groups)
    }

    fn put_modified(&mut self, i: &mut InstanceState) -> Result<()> {
        i.updated = now();
        let s = i.clone();
        self.store.write(|db| db.put_instance(&s))?;
        Ok(())
    }

    /// A stopped instance's NoCloud seed (if it has one) made again with
    /// its current user data, so the next boot sees it as IMDS does.
    fn rewrite_seed(&mut self, i: &InstanceState) -> Result<()> {
        let seed = self.paths.seed_image(&i.instance_id);
        if !seed.exists() {
            return Ok(());
        }
        let owner = Caller::new(i.owner_id.clone(), i.region.clone())?;
        let public_keys = match &i.key_name {
            Some(k) => self
                .key_pair(&owner, k)
                .map(|kp| vec![kp.public_key])
                .unwrap_or_default(),
            None => Vec::new(),
        };
        crate::metadata::build_seed(
            &seed,
            &crate::metadata::SeedSpec {
                instance_id: i.instance_id.clone(),
                hostname: "ip-169-254-0-15".into(),
                user_data: i.user_data.clone(),
                public_keys,
                network_config: None,
            },
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> Result<Change> {
        let mut v = v;
        v["InstanceId"] = json!("i-0123456789abcdef0");
        crate::api::request::<ModifyInstanceAttributeRequest>(&v)?.change()
    }

    #[test]
    fn one_attribute_per_call_in_either_form() {
        assert_eq!(
            req(json!({"Attribute": "instanceType", "Value": "t3.small"})).unwrap(),
            Change::InstanceType("t3.small".into())
        );
        assert_eq!(
            req(json!({"InstanceType": {"Value": "t3.small"}})).unwrap(),
            Change::InstanceType("t3.small".into())
        );
        assert_eq!(
            req(json!({"EnaSupport": {"Value": true}})).unwrap(),
            Change::Flag("enaSupport", true)
        );
        assert_eq!(
            req(json!({"Attribute": "disableApiTermination", "Value": "true"})).unwrap(),
            Change::Flag("disableApiTermination", true)
        );
        assert_eq!(
            req(json!({"UserData": {"Value": "aGk="}})).unwrap(),
            Change::UserData(b"hi".to_vec())
        );
        assert_eq!(
            req(json!({"BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"DeleteOnTermination": false}}]})).unwrap(),
            Change::DeleteOnTermination(vec![("/dev/xvda".into(), false)])
        );
        let e = req(json!({"EnaSupport": {"Value": true}, "SriovNetSupport": {"Value": "simple"}}))
            .unwrap_err();
        assert_eq!(
            e.code(),
            ErrorCode::InvalidParameterCombination,
            "{}",
            e.message()
        );
        assert_eq!(
            req(json!({})).unwrap_err().code(),
            ErrorCode::MissingParameter
        );
        let e = req(json!({"Attribute": "bogus", "Value": "1"})).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidParameterValue);
        let e = req(json!({"Attribute": "enaSupport", "Value": "yes"})).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidParameterValue);
        let e = req(json!({"Attribute": "instanceInitiatedShutdownBehavior", "Value": "halt"}))
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidParameterValue);
        let e = req(json!({"Colour": {"Value": "red"}})).unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnknownParameter);
    }
}
