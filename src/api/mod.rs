//! The contract both front ends speak: EC2's actions, one line each in [`ACTIONS`].
//!
//! Each action is one [`Service`] method taking botocore's request shape
//! (`DescribeImagesRequest`, …) and returning its result shape; [`typed`]
//! turns such a method into a table row. A request arrives as JSON with
//! botocore's member names (PascalCase), whichever front end made it: the
//! HTTP API parses EC2's Query protocol into it
//! ([`crate::http::model::parse_input`]), the CLI its options. [`invoke`]
//! finds the action, takes out `DryRun`, deserializes the request into its
//! type ([`request`]: an unknown member is refused, never dropped), calls
//! the method and returns the result as JSON with botocore's member names,
//! which the HTTP API renders as EC2's XML and the CLI as the aws CLI
//! would. `None` means the operation has no output (EC2 answers
//! `<return>true</return>`). amirun's own settings (the accelerator) travel
//! in [`Context`], never in a request. [`model`] is botocore's EC2 model,
//! the source of every name and type.

pub mod model;

use crate::machine::AccelRequest;
use crate::service::{Caller, Error, ErrorCode, Result, Service};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// What a handler gets besides the request.
pub struct Context<'a> {
    pub service: &'a mut Service,
    pub caller: &'a Caller,
    /// Accelerator for launches (`amirun serve --accel`, `run-instances
    /// --accel`): amirun's own setting, never a request member.
    pub accel: AccelRequest,
    /// Set by [`invoke`] for a request with `DryRun=true`: [`typed`] checks
    /// the request and answers `DryRunOperation` instead of acting.
    pub dry_run: bool,
}

impl<'a> Context<'a> {
    /// A context for one request (not a dry run).
    pub fn new(service: &'a mut Service, caller: &'a Caller, accel: AccelRequest) -> Self {
        Context {
            service,
            caller,
            accel,
            dry_run: false,
        }
    }
}

/// A handler: request JSON in, response JSON out.
pub type Handler = fn(&mut Context, &Value) -> Result<Option<Value>>;

/// Every action the API serves. Adding one is one service method taking
/// botocore's request shape and one line here (and the operation's name in
/// `scripts/gen-ec2-model.py` if it is not there yet).
pub const ACTIONS: &[(&str, Handler)] = &[
    ("DescribeImages", |c, v| {
        typed(c, v, Service::describe_images)
    }),
    ("ImportImage", |c, v| typed(c, v, Service::import_image)),
    ("RegisterImage", |c, v| typed(c, v, Service::register_image)),
    ("DeregisterImage", |c, v| {
        typed(c, v, Service::deregister_image)
    }),
    ("CopyImage", |c, v| typed(c, v, Service::copy_image)),
    ("ModifyImageAttribute", |c, v| {
        typed(c, v, Service::modify_image_attribute)
    }),
    ("DescribeImageAttribute", |c, v| {
        typed(c, v, Service::describe_image_attribute)
    }),
    ("ResetImageAttribute", |c, v| {
        typed(c, v, Service::reset_image_attribute)
    }),
    ("DescribeSnapshots", |c, v| {
        typed(c, v, Service::describe_snapshots)
    }),
    ("DeleteSnapshot", |c, v| {
        typed(c, v, Service::delete_snapshot)
    }),
    ("CreateTags", |c, v| typed(c, v, Service::create_tags)),
    ("DeleteTags", |c, v| typed(c, v, Service::delete_tags)),
    ("DescribeTags", |c, v| typed(c, v, Service::describe_tags)),
    ("RunInstances", |c, v| {
        // The accelerator is amirun's own setting, not a member of the request.
        c.service.set_launch_accel(c.accel);
        // A launch template's data is the base; the request's members override it.
        match v.get("LaunchTemplate") {
            Some(spec) => {
                let merged = c
                    .service
                    .apply_launch_template(c.caller, &request(spec)?, v)?;
                typed(c, &merged, Service::run_instances)
            }
            None => typed(c, v, Service::run_instances),
        }
    }),
    ("DescribeInstances", |c, v| {
        typed(c, v, Service::describe_instances)
    }),
    ("StartInstances", |c, v| {
        typed(c, v, Service::start_instances)
    }),
    ("StopInstances", |c, v| typed(c, v, Service::stop_instances)),
    ("RebootInstances", |c, v| {
        typed(c, v, Service::reboot_instances)
    }),
    ("TerminateInstances", |c, v| {
        typed(c, v, Service::terminate_instances)
    }),
    ("GetConsoleOutput", |c, v| {
        typed(c, v, Service::get_console_output)
    }),
    ("DescribeVolumes", |c, v| {
        typed(c, v, Service::describe_volumes)
    }),
    ("CreateKeyPair", |c, v| {
        typed(c, v, Service::create_key_pair)
    }),
    ("ImportKeyPair", |c, v| {
        typed(c, v, Service::import_key_pair)
    }),
    ("DescribeKeyPairs", |c, v| {
        typed(c, v, Service::describe_key_pairs)
    }),
    ("DeleteKeyPair", |c, v| {
        typed(c, v, Service::delete_key_pair)
    }),
    // EC2's CreateImage returns at once; a worker bakes (service::image_worker).
    ("CreateImage", |c, v| {
        typed(c, v, Service::create_image_async)
    }),
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
    ("CreateSnapshot", |c, v| {
        typed(c, v, Service::create_snapshot)
    }),
    ("CreateSnapshots", |c, v| {
        typed(c, v, Service::create_snapshots)
    }),
    ("CopySnapshot", |c, v| typed(c, v, Service::copy_snapshot)),
    ("DescribeRegions", |c, v| {
        typed(c, v, Service::describe_regions)
    }),
    ("DescribeAvailabilityZones", |c, v| {
        typed(c, v, Service::describe_availability_zones)
    }),
    ("DescribeInstanceTypes", |c, v| {
        typed(c, v, Service::describe_instance_types)
    }),
    ("DescribeInstanceTypeOfferings", |c, v| {
        typed(c, v, Service::describe_instance_type_offerings)
    }),
    ("GetInstanceUefiData", |c, v| {
        typed(c, v, Service::get_instance_uefi_data)
    }),
    ("DescribeInstanceCreditSpecifications", |c, v| {
        typed(c, v, Service::describe_instance_credit_specifications)
    }),
    // Volumes and launch templates
    ("CreateVolume", |c, v| typed(c, v, Service::create_volume)),
    ("AttachVolume", |c, v| typed(c, v, Service::attach_volume)),
    ("DetachVolume", |c, v| typed(c, v, Service::detach_volume)),
    ("DeleteVolume", |c, v| typed(c, v, Service::delete_volume)),
    ("ModifyVolume", |c, v| typed(c, v, Service::modify_volume)),
    ("DescribeVolumesModifications", |c, v| {
        typed(c, v, Service::describe_volumes_modifications)
    }),
    ("CreateLaunchTemplate", |c, v| {
        typed(c, v, Service::create_launch_template)
    }),
    ("CreateLaunchTemplateVersion", |c, v| {
        typed(c, v, Service::create_launch_template_version)
    }),
    ("DescribeLaunchTemplates", |c, v| {
        typed(c, v, Service::describe_launch_templates)
    }),
    ("DescribeLaunchTemplateVersions", |c, v| {
        typed(c, v, Service::describe_launch_template_versions)
    }),
    ("ModifyLaunchTemplate", |c, v| {
        typed(c, v, Service::modify_launch_template)
    }),
    ("DeleteLaunchTemplate", |c, v| {
        typed(c, v, Service::delete_launch_template)
    }),
    ("DeleteLaunchTemplateVersions", |c, v| {
        typed(c, v, Service::delete_launch_template_versions)
    }),
    // VPC networking
    ("CreateVpc", |c, v| typed(c, v, Service::create_vpc)),
    ("DeleteVpc", |c, v| typed(c, v, Service::delete_vpc)),
    ("DescribeVpcs", |c, v| typed(c, v, Service::describe_vpcs)),
    ("CreateSubnet", |c, v| typed(c, v, Service::create_subnet)),
    ("DeleteSubnet", |c, v| typed(c, v, Service::delete_subnet)),
    ("DescribeSubnets", |c, v| {
        typed(c, v, Service::describe_subnets)
    }),
    ("DescribeAccountAttributes", |c, v| {
        typed(c, v, Service::describe_account_attributes)
    }),
    ("CreateSecurityGroup", |c, v| {
        typed(c, v, Service::create_security_group)
    }),
    ("DeleteSecurityGroup", |c, v| {
        typed(c, v, Service::delete_security_group)
    }),
    ("DescribeSecurityGroups", |c, v| {
        typed(c, v, Service::describe_security_groups)
    }),
    ("DescribeSecurityGroupRules", |c, v| {
        typed(c, v, Service::describe_security_group_rules)
    }),
    ("AuthorizeSecurityGroupIngress", |c, v| {
        typed(c, v, Service::authorize_security_group_ingress)
    }),
    ("AuthorizeSecurityGroupEgress", |c, v| {
        typed(c, v, Service::authorize_security_group_egress)
    }),
    ("RevokeSecurityGroupIngress", |c, v| {
        typed(c, v, Service::revoke_security_group_ingress)
    }),
    ("RevokeSecurityGroupEgress", |c, v| {
        typed(c, v, Service::revoke_security_group_egress)
    }),
    ("DescribeNetworkInterfaces", |c, v| {
        typed(c, v, Service::describe_network_interfaces)
    }),
    ("DescribeInternetGateways", |c, v| {
        typed(c, v, Service::describe_internet_gateways)
    }),
    ("DescribeRouteTables", |c, v| {
        typed(c, v, Service::describe_route_tables)
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
/// `("DescribeVpcs", |c, v| typed(c, v, Service::describe_vpcs))`. In a dry
/// run ([`Context::dry_run`]) the request is checked and not acted on.
pub fn typed<I: DeserializeOwned, O: serde::Serialize>(
    c: &mut Context,
    v: &Value,
    method: Method<I, O>,
) -> Result<Option<Value>> {
    let input = request(v)?;
    if c.dry_run {
        return Err(Error::new(
            ErrorCode::DryRunOperation,
            "Request would have succeeded, but DryRun flag is set.",
        ));
    }
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
                    // The path of an unknown member already ends with it.
                    if path == "." || path.is_empty() || path == name {
                        name.to_string()
                    } else if path.ends_with(&format!(".{name}")) {
                        path.clone()
                    } else {
                        format!("{path}.{name}")
                    }
                })
        };
        if let Some(name) = named("missing field `") {
            Error::missing(&name)
        } else if let Some(name) = named("unknown field `") {
            Error::new(
                ErrorCode::UnknownParameter,
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
/// not serve. `DryRun` is handled here for every action: the member is
/// taken out of the request, and when it is true the request is checked
/// against its type and answered with `DryRunOperation`.
pub fn invoke(c: &mut Context, action: &str, input: &Value) -> Result<Option<Value>> {
    let Some(h) = handler(action) else {
        return Err(Error::new(
            ErrorCode::InvalidAction,
            format!("The action {action} is not valid for this web service."),
        ));
    };
    if c.service.is_remote_region(&c.caller.region) && !REMOTE_REGION_ACTIONS.contains(&action) {
        return Err(Error::new(
            ErrorCode::UnsupportedOperation,
            format!(
                "{action} is not supported in region {}, whose instances run on a remote backend; \
                 it serves instances, images, snapshots of AMIs, key pairs, tags and launch templates",
                c.caller.region
            ),
        ));
    }
    let mut input = input.clone();
    if let Some(o) = input.as_object_mut() {
        match o.remove("DryRun") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => c.dry_run = true,
            Some(other) => {
                return Err(Error::invalid_value(format!(
                    "Value ({other}) for parameter DryRun is invalid; use true or false"
                )))
            }
        }
    }
    h(c, &input)
}

/// What a region bound to a remote backend ([`crate::backend`]) serves:
/// the instance and image lifecycle there, and amirun's own records (key
/// pairs, tags, launch templates, AMIs' snapshots, types, regions).
/// Everything else (VPCs, security groups, network interfaces, volumes,
/// instance attributes and status, zones) needs the local engine: it is
/// refused there with `UnsupportedOperation`, never answered from local state.
const REMOTE_REGION_ACTIONS: &[&str] = &[
    "RunInstances",
    "DescribeInstances",
    "StartInstances",
    "StopInstances",
    "RebootInstances",
    "TerminateInstances",
    "GetConsoleOutput",
    "CreateImage",
    "DescribeImages",
    "ImportImage",
    "RegisterImage",
    "DeregisterImage",
    "CopyImage",
    "ModifyImageAttribute",
    "DescribeImageAttribute",
    "ResetImageAttribute",
    "DescribeSnapshots",
    "DeleteSnapshot",
    "CopySnapshot",
    "DescribeSnapshotAttribute",
    "ModifySnapshotAttribute",
    "ResetSnapshotAttribute",
    "CreateTags",
    "DeleteTags",
    "DescribeTags",
    "CreateKeyPair",
    "ImportKeyPair",
    "DescribeKeyPairs",
    "DeleteKeyPair",
    "CreateLaunchTemplate",
    "CreateLaunchTemplateVersion",
    "DescribeLaunchTemplates",
    "DescribeLaunchTemplateVersions",
    "ModifyLaunchTemplate",
    "DeleteLaunchTemplate",
    "DescribeRegions",
    "DescribeInstanceTypes",
];

/// Operations in `ec2_model.json` that have no handler yet (in model order).
/// ExportImage stays here: EC2 exports to S3, amirun to a local file.
#[cfg(test)]
const NOT_SERVED_YET: &[&str] = &["ExportImage", "ModifyInstanceMetadataOptions"];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    #[test]
    fn actions_of_remote_regions_are_served_actions() {
        for a in REMOTE_REGION_ACTIONS {
            assert!(handler(a).is_some(), "{a} is not an action");
        }
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
        assert!(
            e.message().starts_with("The parameter Monitoring is"),
            "{}",
            e.message()
        );
        let e =
            request::<Probe>(&json!({"ImageId": "a", "Placement": {"Tenancy": "x"}})).unwrap_err();
        assert!(
            e.message()
                .starts_with("The parameter Placement.Tenancy is"),
            "{}",
            e.message()
        );
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

    /// A service on a fresh state directory, for requests that never reach a guest.
    fn service(dir: &std::path::Path) -> Service {
        let paths = crate::paths::Paths::new(dir.join("home"), dir.join("run"));
        Service::open(paths, crate::service::ServiceOptions::default()).unwrap()
    }

    /// `DryRun` is answered in `invoke` for every action: a request that
    /// fits its type gets DryRunOperation and changes nothing, one that
    /// does not gets its own error first.
    #[test]
    fn dry_run_checks_the_request_and_acts_on_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut service = service(dir.path());
        let caller = Caller::new("000000000000", "us-east-1").unwrap();
        let mut c = Context::new(&mut service, &caller, AccelRequest::Auto);
        let e = invoke(
            &mut c,
            "CreateKeyPair",
            &json!({"KeyName": "k", "KeyType": "ed25519", "DryRun": true}),
        )
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::DryRunOperation);
        assert_eq!(e.http_status(), 412);
        let mut c = Context::new(&mut service, &caller, AccelRequest::Auto);
        let e = invoke(&mut c, "CreateKeyPair", &json!({"DryRun": true})).unwrap_err();
        assert_eq!(e.code(), ErrorCode::MissingParameter, "{}", e.message());
        let mut c = Context::new(&mut service, &caller, AccelRequest::Auto);
        let e = invoke(
            &mut c,
            "CreateKeyPair",
            &json!({"KeyName": "k", "DryRun": "yes"}),
        )
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidParameterValue);
        let mut c = Context::new(&mut service, &caller, AccelRequest::Auto);
        let listed = invoke(&mut c, "DescribeKeyPairs", &json!({"DryRun": false}))
            .unwrap()
            .unwrap();
        assert_eq!(listed, json!({"KeyPairs": []}), "the dry run made nothing");
        let mut c = Context::new(&mut service, &caller, AccelRequest::Auto);
        let e = invoke(&mut c, "LaunchRockets", &json!({})).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidAction);
    }

    /// Members real clients send are in the request types; members amirun
    /// does not honour are refused by name; base64 members are decoded
    /// where they enter.
    #[test]
    fn requests_take_what_clients_send_and_refuse_the_rest() {
        use crate::service::instances::RunInstancesRequest;
        let r: RunInstancesRequest = request(&json!({
            "ImageId": "ami-1", "MinCount": 1, "MaxCount": 2, "ClientToken": "t",
            "UserData": "aGVsbG8=", "InstanceInitiatedShutdownBehavior": "terminate",
            "MetadataOptions": {"HttpTokens": "required"},
        }))
        .unwrap();
        assert_eq!(r.user_data.unwrap().bytes(), b"hello");
        assert_eq!(
            r.instance_initiated_shutdown_behavior,
            Some(crate::domain::ShutdownBehavior::Terminate)
        );
        let e = request::<RunInstancesRequest>(
            &json!({"ImageId": "ami-1", "MinCount": 1, "MaxCount": 1, "UserData": "%%%"}),
        )
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidParameterValue);
        assert!(e.message().contains("UserData"), "{}", e.message());
        let e = request::<RunInstancesRequest>(&json!({
            "ImageId": "ami-1", "MinCount": 1, "MaxCount": 1,
            "InstanceInitiatedShutdownBehavior": "hibernate",
        }))
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidParameterValue);
        let e = request::<RunInstancesRequest>(&json!({
            "ImageId": "ami-1", "MinCount": 1, "MaxCount": 1, "CpuOptions": {"CoreCount": 1},
        }))
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnknownParameter);
        let e = request::<crate::service::images::ImportImageRequest>(
            &json!({"DiskContainers": [{"Url": "http://x/d.raw", "UserBucket": {"S3Bucket": "b"}}]}),
        )
        .unwrap_err();
        assert!(
            e.message().contains("DiskContainers[0].UserBucket"),
            "{}",
            e.message()
        );
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

    /// A sample JSON value of a model shape, type-correct for its kind.
    fn sample(model: &super::model::Model, shape: &str) -> Value {
        let s = model.shape(shape);
        match s.kind.as_str() {
            "structure" | "map" => json!({}),
            "list" => json!([sample(model, &s.member.as_ref().unwrap().shape)]),
            "integer" | "long" => json!(1),
            "double" | "float" => json!(1.0),
            "boolean" => json!(true),
            "timestamp" => json!("2026-01-01T00:00:00Z"),
            "blob" => json!("aGVsbG8="),
            _ => json!("x"),
        }
    }

    /// The shape at a member path of a request (`Placement.Tenancy`,
    /// `DiskContainers[0].Url`), from the input shape.
    fn shape_at<'m>(model: &'m super::model::Model, input: &'m str, path: &str) -> Option<&'m str> {
        let mut shape = input;
        for part in path.split('.') {
            let (name, indexed) = match part.split_once('[') {
                Some((n, _)) => (n, true),
                None => (part, false),
            };
            shape = &model.shape(shape).members.get(name)?.shape;
            if indexed {
                shape = &model.shape(shape).member.as_ref()?.shape;
            }
        }
        Some(shape)
    }

    /// Put `value` at a member path of a request, making the objects and
    /// one-item lists on the way.
    fn put(request: &mut Value, path: &str, value: Value) {
        let mut at = request;
        let parts: Vec<&str> = path.split('.').collect();
        for (n, part) in parts.iter().enumerate() {
            let last = n + 1 == parts.len();
            let (name, indexed) = match part.split_once('[') {
                Some((name, _)) => (name, true),
                None => (*part, false),
            };
            let obj = at.as_object_mut().unwrap();
            if indexed {
                let list = obj.entry(name).or_insert_with(|| json!([{}]));
                at = &mut list.as_array_mut().unwrap()[0];
                if last {
                    *at = value;
                    return;
                }
            } else if last {
                obj.insert(name.to_string(), value);
                return;
            } else {
                at = obj.entry(name).or_insert_with(|| json!({}));
            }
        }
    }

    /// How a dry run of one request ends: after filling in every member the
    /// request type requires (named by `MissingParameter`), either
    /// `DryRunOperation` (the request parsed) or another error.
    fn dry_run(
        service: &mut Service,
        action: &str,
        input: &str,
        mut request: Value,
    ) -> Result<Option<Value>> {
        let model = super::model::model();
        let caller = Caller::new("000000000000", "us-east-1").unwrap();
        for _ in 0..12 {
            let mut v = request.clone();
            v["DryRun"] = json!(true);
            let mut c = Context::new(service, &caller, AccelRequest::Auto);
            match invoke(&mut c, action, &v) {
                Err(e) if e.code() == ErrorCode::MissingParameter => {
                    let path = e
                        .message()
                        .strip_prefix("The request must contain the parameter ")
                        .unwrap_or_else(|| panic!("{action}: {}", e.message()))
                        .to_string();
                    // A rule of the handler, not the type (RunInstances'
                    // LaunchTemplate needs an id or a name): its answer.
                    let Some(shape) = shape_at(model, input, &path) else {
                        return Err(e);
                    };
                    let value = sample(model, shape);
                    put(&mut request, &path, value);
                }
                other => return other,
            }
        }
        panic!("{action}: required members never satisfied: {request}")
    }

    /// The model walk (issue 17): for every served action, a request with
    /// one input member of botocore's model (a type-correct sample value)
    /// is either refused with an EC2 error (`UnknownParameter` naming it,
    /// or a value error) or parses into the action's request type and gets
    /// `DryRunOperation`; never a success, never a silent drop.
    #[test]
    fn every_model_member_of_every_action_is_taken_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut service = service(dir.path());
        let model = super::model::model();
        let (mut actions, mut accepted, mut refused, mut value_refused) = (0, 0, 0, 0);
        let mut unknown: Vec<String> = Vec::new();
        for (action, _) in ACTIONS {
            let Some(input) = model.operations[*action].input.as_deref() else {
                continue;
            };
            actions += 1;
            // The smallest request the type takes: its required members.
            match dry_run(&mut service, action, input, json!({})) {
                Err(e) if e.code() == ErrorCode::DryRunOperation => {}
                other => panic!("{action}: a dry run of its required members got {other:?}"),
            }
            for (member, r) in &model.shape(input).members {
                if member == "DryRun" {
                    continue;
                }
                let mut v = json!({});
                put(&mut v, member, sample(model, &r.shape));
                match dry_run(&mut service, action, input, v) {
                    Ok(out) => panic!("{action}.{member}: silent success {out:?}"),
                    Err(e) if e.code() == ErrorCode::DryRunOperation => accepted += 1,
                    Err(e) if e.code() == ErrorCode::UnknownParameter => {
                        assert!(
                            e.message().contains(member.as_str()),
                            "{action}.{member}: {}",
                            e.message()
                        );
                        refused += 1;
                        unknown.push(format!("{action}.{member}"));
                    }
                    Err(e) => {
                        assert!(
                            matches!(
                                e.code(),
                                ErrorCode::InvalidParameterValue
                                    | ErrorCode::MissingParameter
                                    | ErrorCode::UnsupportedOperation
                                    | ErrorCode::InvalidParameterCombination
                            ),
                            "{action}.{member}: {:?} {}",
                            e.code(),
                            e.message()
                        );
                        value_refused += 1;
                    }
                }
            }
        }
        eprintln!(
            "model walk: {actions} actions, {accepted} members taken, {refused} refused as unknown, \
             {value_refused} refused for the sample value"
        );
        eprintln!("refused as unknown: {unknown:?}");
        assert!(
            actions >= 60 && accepted > 200 && refused > 0,
            "{actions} {accepted} {refused}"
        );
        // Paging and idempotency are never refused: every served action
        // whose model has them takes them (boto3's paginators send
        // `MaxResults`/`NextToken`, boto3 fills `ClientToken` by itself;
        // ImportImage's token is not botocore's idempotency token, and
        // amirun refuses it rather than import twice under one token).
        let must_take: Vec<&String> = unknown
            .iter()
            .filter(|m| {
                m.ends_with(".MaxResults")
                    || m.ends_with(".NextToken")
                    || (m.ends_with(".ClientToken") && *m != "ImportImage.ClientToken")
            })
            .collect();
        assert!(
            must_take.is_empty(),
            "refused but must be honoured: {must_take:?}"
        );
    }
}
