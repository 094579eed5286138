//! The contract both front ends speak: EC2's actions, one line each in [`ACTIONS`].
//!
//! A request is JSON with botocore's member names (PascalCase), whichever
//! front end made it: the HTTP API parses EC2's Query protocol into it
//! ([`crate::http::model::parse_input`]), the CLI its options. [`invoke`]
//! finds the action, calls its [`Service`] method and returns the result as
//! JSON with botocore's member names, which the HTTP API renders as EC2's
//! XML and the CLI as the aws CLI would. `None` means the operation has no
//! output (EC2 answers `<return>true</return>`). [`model`] is botocore's
//! EC2 model, the source of every name and type.

pub mod model;

use crate::machine::AccelRequest;
use crate::service::shapes::*;
use crate::service::{Caller, Error, Result, Service};
use base64::Engine;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// What a handler gets besides the request.
pub struct Context<'a> {
    pub service: &'a mut Service,
    pub caller: &'a Caller,
    /// Accelerator for launches (`amirun serve --accel`).
    pub accel: AccelRequest,
}

/// A handler: request JSON in, response JSON out.
pub type Handler = fn(&mut Context, &Value) -> Result<Option<Value>>;

/// Every action the API serves. Adding one is one line here (and the
/// operation's name in `scripts/gen-ec2-model.py` if it is not there yet).
pub const ACTIONS: &[(&str, Handler)] = &[
    ("DescribeImages", describe_images),
    ("ImportImage", import_image),
    ("RegisterImage", register_image),
    ("DeregisterImage", deregister_image),
    ("CopyImage", copy_image),
    ("ModifyImageAttribute", modify_image_attribute),
    ("DescribeImageAttribute", describe_image_attribute),
    ("ResetImageAttribute", reset_image_attribute),
    ("DescribeSnapshots", describe_snapshots),
    ("DeleteSnapshot", delete_snapshot),
    ("CreateTags", create_tags),
    ("DeleteTags", delete_tags),
    ("DescribeTags", describe_tags),
    ("RunInstances", run_instances),
    ("DescribeInstances", describe_instances),
    ("StartInstances", start_instances),
    ("StopInstances", stop_instances),
    ("RebootInstances", reboot_instances),
    ("TerminateInstances", terminate_instances),
    ("GetConsoleOutput", get_console_output),
    ("DescribeVolumes", describe_volumes),
    ("CreateKeyPair", create_key_pair),
    ("ImportKeyPair", import_key_pair),
    ("DescribeKeyPairs", describe_key_pairs),
    ("DeleteKeyPair", delete_key_pair),
    ("CreateSnapshot", create_snapshot),
    ("CopySnapshot", copy_snapshot),
    ("DescribeRegions", describe_regions),
    ("DescribeAvailabilityZones", describe_availability_zones),
    ("DescribeInstanceTypes", describe_instance_types),
    (
        "DescribeInstanceTypeOfferings",
        describe_instance_type_offerings,
    ),
    ("GetInstanceUefiData", get_instance_uefi_data),
    (
        "DescribeInstanceCreditSpecifications",
        describe_instance_credit_specifications,
    ),
    // Instance status and attributes, snapshot attributes
    ("DescribeInstanceStatus", |c, v| {
        typed(c, v, Service::describe_instance_status)
    }),
    ("DescribeInstanceAttribute", |c, v| {
        typed(c, v, Service::describe_instance_attribute)
    }),
    ("ModifyInstanceAttribute", |c, v| {
        typed(c, v, Service::modify_instance_attribute)
    }),
    ("DescribeSnapshotAttribute", |c, v| {
        typed(c, v, Service::describe_snapshot_attribute)
    }),
    ("ModifySnapshotAttribute", |c, v| {
        typed(c, v, Service::modify_snapshot_attribute)
    }),
    ("ResetSnapshotAttribute", |c, v| {
        typed(c, v, Service::reset_snapshot_attribute)
    }),
    // EC2's CreateImage returns at once; a worker bakes (service::image_worker).
    ("CreateImage", |c, v| {
        typed(c, v, Service::create_image_async)
    }),
    // ExportImage is left out: EC2 exports to S3 (S3ExportLocation), amirun
    // to a local file, and the Query API has no member for a path.
];

/// A typed service method: the request as its EC2 shape in, the result out.
pub type Method<I, O> = fn(&mut Service, &Caller, I) -> Result<O>;

/// Run a typed service method on a request: the JSON is deserialized into
/// the method's request type (botocore's member names), so a member the
/// type does not know is refused rather than dropped, and the result is
/// serialized back (`()` means no output). One table row per action:
/// `("DescribeVpcs", |c, v| typed(c, v, Service::describe_vpcs))`.
pub fn typed<I: DeserializeOwned, O: serde::Serialize>(
    c: &mut Context,
    v: &Value,
    method: Method<I, O>,
) -> Result<Option<Value>> {
    let input = request(v)?;
    let output = method(c.service, c.caller, input)?;
    match serde_json::to_value(output).expect("service results serialize") {
        Value::Null => Ok(None),
        v => Ok(Some(v)),
    }
}

/// A request's JSON as a request type, with EC2's error for what does not fit:
/// `MissingParameter` for a required member, `UnknownParameter` for a
/// member amirun does not honour, `InvalidParameterValue` for a value of
/// the wrong type or out of range.
pub fn request<I: DeserializeOwned>(v: &Value) -> Result<I> {
    let v = match v {
        Value::Null => Value::Object(Default::default()),
        v => v.clone(),
    };
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        let named = |prefix: &str| {
            message
                .strip_prefix(prefix)
                .and_then(|rest| rest.split('`').next())
                .map(|name| {
                    if path == "." || path.is_empty() {
                        name.to_string()
                    } else {
                        format!("{path}.{name}")
                    }
                })
        };
        if let Some(name) = named("missing field `") {
            Error::missing(&name)
        } else if let Some(name) = named("unknown field `") {
            Error::new(
                crate::service::ErrorCode::UnknownParameter,
                format!(
                    "The parameter {name} is not supported by amirun; leave it out of the request"
                ),
            )
        } else {
            Error::invalid_value(format!("Value for parameter {path} is invalid: {message}"))
        }
    })
}

/// The handler for an action name.
pub fn handler(action: &str) -> Option<Handler> {
    ACTIONS.iter().find(|(a, _)| *a == action).map(|(_, h)| *h)
}

/// Run one action on a request: `InvalidAction` for an action amirun does
/// not serve.
pub fn invoke(c: &mut Context, action: &str, input: &Value) -> Result<Option<Value>> {
    let Some(h) = handler(action) else {
        return Err(Error::new(
            crate::service::ErrorCode::InvalidAction,
            format!("The action {action} is not valid for this web service."),
        ));
    };
    h(c, input)
}

fn strs(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn opt_str(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(String::from)
}

fn req_str(v: &Value, key: &str) -> Result<String> {
    opt_str(v, key).ok_or_else(|| Error::missing(key))
}

fn flag(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// A member deserialized into a service input type (absent: its default).
fn de<T: DeserializeOwned + Default>(v: &Value, key: &str) -> Result<T> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(x) => serde_json::from_value(x.clone()).map_err(|e| {
            Error::invalid_value(format!("Value for parameter {key} is invalid: {e}"))
        }),
    }
}

/// A base64 blob parameter (UserData, PublicKeyMaterial).
fn blob(v: &Value, key: &str) -> Result<Option<Vec<u8>>> {
    opt_str(v, key)
        .map(|s| {
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|e| {
                    Error::invalid_value(format!("Invalid BASE64 encoding of {key}")).with_source(e)
                })
        })
        .transpose()
}

fn out<T: serde::Serialize>(t: T) -> Result<Option<Value>> {
    Ok(Some(
        serde_json::to_value(t).expect("service outputs serialize"),
    ))
}

fn describe_images(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let input = DescribeImagesInput {
        image_ids: strs(v, "ImageIds"),
        owners: strs(v, "Owners"),
        executable_users: strs(v, "ExecutableUsers"),
        filters: de(v, "Filters")?,
    };
    out(json!({ "Images": c.service.describe_images(c.caller, &input)? }))
}

fn import_image(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let input = ImportImageInput {
        disk_containers: de(v, "DiskContainers")?,
        description: opt_str(v, "Description"),
        architecture: opt_str(v, "Architecture"),
        boot_mode: opt_str(v, "BootMode"),
        platform: opt_str(v, "Platform"),
        tag_specifications: de(v, "TagSpecifications")?,
    };
    out(c.service.import_image(c.caller, &input)?)
}

fn register_image(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let input = RegisterImageInput {
        name: req_str(v, "Name")?,
        description: opt_str(v, "Description"),
        architecture: opt_str(v, "Architecture"),
        image_location: opt_str(v, "ImageLocation"),
        root_device_name: opt_str(v, "RootDeviceName"),
        block_device_mappings: de(v, "BlockDeviceMappings")?,
        boot_mode: opt_str(v, "BootMode"),
        virtualization_type: opt_str(v, "VirtualizationType"),
        tag_specifications: de(v, "TagSpecifications")?,
    };
    out(json!({ "ImageId": c.service.register_image(c.caller, &input)? }))
}

fn deregister_image(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let id = req_str(v, "ImageId")?;
    out(c
        .service
        .deregister_image(c.caller, &id, flag(v, "DeleteAssociatedSnapshots"))?)
}

fn copy_image(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let input = CopyImageInput {
        source_region: req_str(v, "SourceRegion")?,
        source_image_id: req_str(v, "SourceImageId")?,
        name: req_str(v, "Name")?,
        description: opt_str(v, "Description"),
        copy_image_tags: flag(v, "CopyImageTags"),
        tag_specifications: de(v, "TagSpecifications")?,
    };
    out(json!({ "ImageId": c.service.copy_image(c.caller, &input)? }))
}

fn modify_image_attribute(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let launch_permission: Option<LaunchPermissionModifications> = match v.get("LaunchPermission") {
        Some(_) => Some(de(v, "LaunchPermission")?),
        None => None,
    };
    let input = ModifyImageAttributeInput {
        image_id: req_str(v, "ImageId")?,
        attribute: opt_str(v, "Attribute"),
        operation_type: opt_str(v, "OperationType"),
        user_ids: strs(v, "UserIds"),
        user_groups: strs(v, "UserGroups"),
        launch_permission,
        description: v
            .pointer("/Description/Value")
            .and_then(Value::as_str)
            .map(String::from),
        value: opt_str(v, "Value"),
    };
    c.service.modify_image_attribute(c.caller, &input)?;
    Ok(None)
}

fn describe_image_attribute(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let (id, attr) = (req_str(v, "ImageId")?, req_str(v, "Attribute")?);
    out(c.service.describe_image_attribute(c.caller, &id, &attr)?)
}

fn reset_image_attribute(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let (id, attr) = (req_str(v, "ImageId")?, req_str(v, "Attribute")?);
    c.service.reset_image_attribute(c.caller, &id, &attr)?;
    Ok(None)
}

fn create_snapshot(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let input = crate::service::layers::CreateSnapshotInput {
        volume_id: req_str(v, "VolumeId")?,
        description: opt_str(v, "Description"),
        tag_specifications: de(v, "TagSpecifications")?,
        flatten: false,
    };
    out(c.service.create_snapshot(c.caller, &input)?)
}

fn copy_snapshot(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let input = crate::service::layers::CopySnapshotInput {
        source_snapshot_id: req_str(v, "SourceSnapshotId")?,
        source_region: opt_str(v, "SourceRegion"),
        description: opt_str(v, "Description"),
        tag_specifications: de(v, "TagSpecifications")?,
        flatten: false,
    };
    out(json!({ "SnapshotId": c.service.copy_snapshot(c.caller, &input)? }))
}

fn describe_snapshots(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let input = DescribeSnapshotsInput {
        snapshot_ids: strs(v, "SnapshotIds"),
        owner_ids: strs(v, "OwnerIds"),
        restorable_by_user_ids: strs(v, "RestorableByUserIds"),
        filters: de(v, "Filters")?,
    };
    out(json!({ "Snapshots": c.service.describe_snapshots(c.caller, &input)? }))
}

fn delete_snapshot(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    c.service
        .delete_snapshot(c.caller, &req_str(v, "SnapshotId")?)?;
    Ok(None)
}

fn create_tags(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let tags: Vec<Tag> = de(v, "Tags")?;
    c.service
        .create_tags(c.caller, &strs(v, "Resources"), &tags)?;
    Ok(None)
}

fn delete_tags(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let tags: Vec<Tag> = de(v, "Tags")?;
    c.service
        .delete_tags(c.caller, &strs(v, "Resources"), &tags)?;
    Ok(None)
}

fn describe_tags(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let filters: Vec<Filter> = de(v, "Filters")?;
    out(json!({ "Tags": c.service.describe_tags(c.caller, &filters)? }))
}

fn run_instances(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let count = |key: &str| -> Result<u32> {
        let n = v
            .get(key)
            .and_then(Value::as_i64)
            .ok_or_else(|| Error::missing(key))?;
        u32::try_from(n).map_err(|_| {
            Error::invalid_value(format!("Value ({n}) for parameter {key} is invalid"))
        })
    };
    let input = crate::service::instances::RunInstancesInput {
        image_id: req_str(v, "ImageId")?,
        instance_type: opt_str(v, "InstanceType"),
        min_count: count("MinCount")?,
        max_count: count("MaxCount")?,
        key_name: opt_str(v, "KeyName"),
        user_data: blob(v, "UserData")?,
        block_device_mappings: de(v, "BlockDeviceMappings")?,
        shutdown_behavior: opt_str(v, "InstanceInitiatedShutdownBehavior"),
        tag_specifications: de(v, "TagSpecifications")?,
        accel: c.accel,
        metadata_options: v.get("MetadataOptions").cloned(),
    };
    out(c.service.run_instances(c.caller, &input)?)
}

fn describe_instances(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let filters: Vec<Filter> = de(v, "Filters")?;
    out(c
        .service
        .describe_instances(c.caller, &strs(v, "InstanceIds"), &filters)?)
}

fn start_instances(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    out(c
        .service
        .start_instances(c.caller, &strs(v, "InstanceIds"))?)
}

fn stop_instances(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    out(c
        .service
        .stop_instances(c.caller, &strs(v, "InstanceIds"), flag(v, "Force"))?)
}

fn reboot_instances(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    c.service
        .reboot_instances(c.caller, &strs(v, "InstanceIds"))?;
    Ok(None)
}

fn terminate_instances(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    out(c
        .service
        .terminate_instances(c.caller, &strs(v, "InstanceIds"))?)
}

fn get_console_output(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let o =
        c.service
            .get_console_output(c.caller, &req_str(v, "InstanceId")?, flag(v, "Latest"))?;
    // On the wire the output is base64 (clients decode it).
    out(json!({
        "InstanceId": o.instance_id,
        "Timestamp": o.timestamp,
        "Output": base64::engine::general_purpose::STANDARD.encode(o.output.as_bytes()),
    }))
}

fn describe_volumes(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let filters: Vec<Filter> = de(v, "Filters")?;
    out(c
        .service
        .describe_volumes(c.caller, &strs(v, "VolumeIds"), &filters)?)
}

fn create_key_pair(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let key_type = opt_str(v, "KeyType");
    let specs: Vec<TagSpecification> = de(v, "TagSpecifications")?;
    out(c.service.create_key_pair(
        c.caller,
        &req_str(v, "KeyName")?,
        key_type.as_deref(),
        &specs,
    )?)
}

fn import_key_pair(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let material =
        blob(v, "PublicKeyMaterial")?.ok_or_else(|| Error::missing("PublicKeyMaterial"))?;
    let specs: Vec<TagSpecification> = de(v, "TagSpecifications")?;
    out(c
        .service
        .import_key_pair(c.caller, &req_str(v, "KeyName")?, &material, &specs)?)
}

fn describe_key_pairs(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let input = crate::service::DescribeKeyPairsInput {
        key_names: strs(v, "KeyNames"),
        key_pair_ids: strs(v, "KeyPairIds"),
        filters: de(v, "Filters")?,
        include_public_key: flag(v, "IncludePublicKey"),
    };
    out(json!({ "KeyPairs": c.service.describe_key_pairs(c.caller, &input)? }))
}

fn describe_regions(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    out(c
        .service
        .describe_regions(c.caller, &strs(v, "RegionNames"))?)
}

fn describe_availability_zones(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    out(c
        .service
        .describe_availability_zones(c.caller, &strs(v, "ZoneNames"))?)
}

fn delete_key_pair(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    c.service
        .delete_key_pair(c.caller, &req_str(v, "KeyName")?)?;
    out(json!({ "Return": true }))
}

fn paging(v: &Value) -> crate::service::instance_types::Paging {
    crate::service::instance_types::Paging {
        max_results: v.get("MaxResults").and_then(Value::as_i64),
        next_token: opt_str(v, "NextToken"),
    }
}

fn describe_instance_types(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let input = crate::service::instance_types::DescribeInstanceTypesInput {
        instance_types: strs(v, "InstanceTypes"),
        filters: de(v, "Filters")?,
        paging: paging(v),
    };
    out(c.service.describe_instance_types(c.caller, &input)?)
}

fn describe_instance_type_offerings(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let input = crate::service::instance_types::DescribeInstanceTypeOfferingsInput {
        location_type: opt_str(v, "LocationType"),
        filters: de(v, "Filters")?,
        paging: paging(v),
    };
    out(c
        .service
        .describe_instance_type_offerings(c.caller, &input)?)
}

fn get_instance_uefi_data(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    out(c
        .service
        .get_instance_uefi_data(c.caller, &req_str(v, "InstanceId")?)?)
}

fn describe_instance_credit_specifications(c: &mut Context, v: &Value) -> Result<Option<Value>> {
    let filters: Vec<Filter> = de(v, "Filters")?;
    out(c.service.describe_instance_credit_specifications(
        c.caller,
        &strs(v, "InstanceIds"),
        &filters,
    )?)
}

/// Operations in `ec2_model.json` that have no handler yet (in model order).
/// ExportImage stays here: EC2 exports to S3, amirun to a local file.
#[cfg(test)]
const NOT_SERVED_YET: &[&str] = &[
    "AttachVolume",
    "AuthorizeSecurityGroupEgress",
    "AuthorizeSecurityGroupIngress",
    "CreateLaunchTemplate",
    "CreateLaunchTemplateVersion",
    "CreateSecurityGroup",
    "CreateSnapshots",
    "CreateSubnet",
    "CreateVolume",
    "CreateVpc",
    "DeleteLaunchTemplate",
    "DeleteLaunchTemplateVersions",
    "DeleteSecurityGroup",
    "DeleteSubnet",
    "DeleteVolume",
    "DeleteVpc",
    "DescribeAccountAttributes",
    "DescribeInternetGateways",
    "DescribeLaunchTemplateVersions",
    "DescribeLaunchTemplates",
    "DescribeNetworkInterfaces",
    "DescribeRouteTables",
    "DescribeSecurityGroupRules",
    "DescribeSecurityGroups",
    "DescribeSubnets",
    "DescribeVolumesModifications",
    "DescribeVpcs",
    "DetachVolume",
    "ExportImage",
    "ModifyInstanceMetadataOptions",
    "ModifyLaunchTemplate",
    "ModifyVolume",
    "RevokeSecurityGroupEgress",
    "RevokeSecurityGroupIngress",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "PascalCase", deny_unknown_fields)]
    struct Probe {
        image_id: String,
        #[serde(default)]
        max_count: Option<u32>,
        #[serde(default)]
        placement: Option<ProbePlacement>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "PascalCase", deny_unknown_fields)]
    struct ProbePlacement {
        #[serde(default)]
        availability_zone: Option<String>,
    }

    /// A request type refuses what it does not know and names what is missing.
    #[test]
    fn requests_refuse_and_name() {
        let ok: Probe = request(&json!({"ImageId": "ami-1", "MaxCount": 2})).unwrap();
        assert_eq!((ok.image_id.as_str(), ok.max_count), ("ami-1", Some(2)));
        let e = request::<Probe>(&json!({"MaxCount": 2})).unwrap_err();
        assert_eq!(e.code().as_str(), "MissingParameter", "{}", e.message());
        assert!(e.message().contains("ImageId"), "{}", e.message());
        let e = request::<Probe>(&json!({"ImageId": "a", "Monitoring": {}})).unwrap_err();
        assert_eq!(e.code().as_str(), "UnknownParameter", "{}", e.message());
        assert!(e.message().contains("Monitoring"), "{}", e.message());
        let e =
            request::<Probe>(&json!({"ImageId": "a", "Placement": {"Tenancy": "x"}})).unwrap_err();
        assert!(e.message().contains("Placement.Tenancy"), "{}", e.message());
        let e = request::<Probe>(&json!({"ImageId": "a", "MaxCount": -1})).unwrap_err();
        assert_eq!(
            e.code().as_str(),
            "InvalidParameterValue",
            "{}",
            e.message()
        );
        assert!(e.message().contains("MaxCount"), "{}", e.message());
        assert!(request::<Probe>(&Value::Null).is_err());
        let p: Probe =
            request(&json!({"ImageId": "a", "Placement": {"AvailabilityZone": "z"}})).unwrap();
        assert_eq!(p.placement.unwrap().availability_zone.as_deref(), Some("z"));
    }

    /// Every action is in the embedded botocore model, and every operation
    /// the model slice has but amirun does not serve yet is a known gap.
    #[test]
    fn actions_match_the_model() {
        let model = super::model::model();
        for (name, _) in ACTIONS {
            assert!(
                model.operations.contains_key(*name),
                "{name} not in the model"
            );
        }
        let pending: Vec<&String> = model
            .operations
            .keys()
            .filter(|op| handler(op).is_none())
            .collect();
        assert_eq!(
            pending,
            NOT_SERVED_YET,
            "operations in ec2_model.json without a handler (serve one: remove it from NOT_SERVED_YET)"
        );
    }
}
