//! The `aws ec2` verbs, made from botocore's model as the aws CLI makes them:
//! every action of [`crate::api::ACTIONS`] is a verb with no code of its own.
//!
//! An action's options are the members of its input shape, named by
//! botocore's `xform_name` (`ImageIds` -> `--image-ids`): booleans as
//! `--x` / `--no-x`, lists as several words, scalars as one, structures in
//! JSON or the shorthand ([`super::params`]). The options become a request
//! with botocore's member names, holding only what the user gave, and go to
//! [`crate::api::invoke`], the very handler the HTTP API calls. Adding an
//! action to the table adds its verb here.
//!
//! What the aws CLI adds on top of the model (awscli/customizations, and
//! botocore's handlers) is kept in one table, [`CUSTOMIZATIONS`].

use super::params::{self, ParamError};
use super::Failure;
use crate::api::model::{model, Shape};
use crate::machine::AccelRequest;
use base64::Engine;
use clap::{Arg, ArgAction, ArgMatches, Command};
use serde_json::{Map, Value};

/// One thing the aws CLI does beyond the model, for one action.
#[derive(Debug, Clone, Copy)]
pub enum Custom {
    /// `--count N` or `--count MIN:MAX` sets MinCount and MaxCount
    /// (awscli/customizations/ec2/addcount.py); `--min-count` and
    /// `--max-count` stay. Without any of them one instance is launched;
    /// `--min-count` alone launches that many.
    Count,
    /// The member is text (or `file://`, `fileb://`) the CLI base64-encodes
    /// for the user (botocore's `base64_encode_user_data`).
    Base64Encode(&'static str),
    /// The result member is base64 the CLI decodes for display (botocore's
    /// `decode_console_output`). Tolerant: a value that is not base64 of
    /// text is shown as it came (a service that returns plain text).
    Base64Decode(&'static str),
    /// The member's value is taken literally, never loaded from a file:
    /// it is a URL (awscli/paramfile.py's PARAMFILE_DISABLED).
    NoParamfile(&'static str),
    /// A boolean's negative option has its own name
    /// (awscli/customizations/argrename.py).
    Negative(&'static str, &'static str),
    /// amirun's `--accel auto|kvm|tcg` (also `AMIRUN_ACCEL`): the
    /// accelerator of the launch, given to the API context, not the request.
    Accel,
}

/// Every customization, by action.
pub const CUSTOMIZATIONS: &[(&str, Custom)] = &[
    ("RunInstances", Custom::Count),
    ("RunInstances", Custom::Base64Encode("UserData")),
    ("RunInstances", Custom::Accel),
    (
        "RunInstances",
        Custom::Negative("DisableApiTermination", "enable-api-termination"),
    ),
    ("CreateImage", Custom::Negative("NoReboot", "reboot")),
    ("GetConsoleOutput", Custom::Base64Decode("Output")),
    ("RegisterImage", Custom::NoParamfile("ImageLocation")),
];

fn customs(action: &str) -> impl Iterator<Item = Custom> + '_ {
    CUSTOMIZATIONS
        .iter()
        .filter(move |(a, _)| *a == action)
        .map(|(_, c)| *c)
}

/// botocore's `xform_name(name, '-')`: `DescribeImages` -> `describe-images`,
/// `DryRun` -> `dry-run`, `Ipv6Addresses` -> `ipv6-addresses`.
pub fn xform_name(name: &str) -> String {
    use std::sync::OnceLock;
    static RE: OnceLock<[regex::Regex; 3]> = OnceLock::new();
    let [special, first_cap, end_cap] = RE.get_or_init(|| {
        [
            regex::Regex::new("[A-Z]{2,}s$").expect("regex"),
            regex::Regex::new("(.)([A-Z][a-z]+)").expect("regex"),
            regex::Regex::new("([a-z0-9])([A-Z])").expect("regex"),
        ]
    });
    if name.contains('-') {
        return name.to_string();
    }
    let mut name = name.to_string();
    if let Some(m) = special.find(&name) {
        name = format!("{}-{}", &name[..m.start()], m.as_str().to_lowercase());
    }
    let s1 = first_cap.replace_all(&name, "${1}-${2}");
    end_cap.replace_all(&s1, "${1}-${2}").to_lowercase()
}

/// [`xform_name`] of a name from the model, kept for the life of the
/// process (clap's names are `&'static str`); the model's names are a
/// fixed set, so this is a table filled as it is read.
pub fn cli_name(name: &str) -> &'static str {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<HashMap<String, &'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    names
        .entry(name.to_string())
        .or_insert_with(|| Box::leak(xform_name(name).into_boxed_str()))
}

/// The verbs: (action, verb name) for every action the API serves.
pub fn all() -> impl Iterator<Item = (&'static str, &'static str)> {
    crate::api::ACTIONS
        .iter()
        .map(|(action, _)| (*action, cli_name(action)))
}

/// `DescribeImages` -> "Describe images (EC2 DescribeImages)".
fn summary(action: &str) -> String {
    let words = xform_name(action).replace('-', " ");
    let mut c = words.chars();
    let first = c.next().map(|f| f.to_uppercase().collect::<String>());
    format!("{}{} (EC2 {action})", first.unwrap_or_default(), c.as_str())
}

/// The id of a boolean's negative option.
fn negative_id(member: &str) -> &'static str {
    cli_name(&format!("no:{member}"))
}

/// The verb of `action`: with `options`, every option of its input shape
/// (and its customizations); without, only its name and summary (for
/// `amirun --help`).
pub fn command(action: &str, verb: &'static str, options: bool) -> Command {
    let cmd = Command::new(verb).about(summary(action));
    if !options {
        return cmd;
    }
    let m = model();
    let mut cmd = cmd
        .args_override_self(true)
        .allow_negative_numbers(true)
        .after_help(
            "Structures take JSON or the aws CLI's shorthand (as shown); any value can be \
             read from file://PATH (text) or fileb://PATH (bytes).",
        );
    for (member, r) in input_members(action) {
        let member = member.as_str();
        let shape = m.shape(&r.shape);
        let long = cli_name(member);
        let help = type_help(shape);
        if shape.kind == "boolean" {
            let negative = customs(action)
                .find_map(|c| match c {
                    Custom::Negative(mem, name) if mem == member => Some(name),
                    _ => None,
                })
                .unwrap_or_else(|| cli_name(&format!("no-{long}")));
            cmd = cmd
                .arg(
                    Arg::new(member)
                        .long(long)
                        .action(ArgAction::SetTrue)
                        .overrides_with(negative_id(member))
                        .help(format!("boolean (--{negative} for false)")),
                )
                .arg(
                    Arg::new(negative_id(member))
                        .long(negative)
                        .action(ArgAction::SetTrue)
                        .overrides_with(member)
                        .hide(true),
                );
            continue;
        }
        let arg = Arg::new(member)
            .long(long)
            .value_name(value_name(shape))
            .help(help);
        cmd = cmd.arg(if shape.kind == "list" {
            arg.num_args(1..).action(ArgAction::Append)
        } else {
            arg.num_args(1).action(ArgAction::Set)
        });
    }
    for c in customs(action) {
        match c {
            Custom::Count => {
                cmd = cmd.arg(
                    Arg::new("count")
                        .long("count")
                        .value_name("MIN[:MAX]")
                        .help("string: instances to launch, N or MIN:MAX (sets MinCount and MaxCount; default 1)"),
                )
            }
            Custom::Accel => {
                cmd = cmd.arg(
                    Arg::new("accel")
                        .long("accel")
                        .env("AMIRUN_ACCEL")
                        .default_value("auto")
                        .value_name("auto|kvm|tcg")
                        .help("amirun: accelerator for the guests (KVM only when it demonstrably works)"),
                )
            }
            _ => {}
        }
    }
    cmd
}

fn input_members(
    action: &str,
) -> impl Iterator<Item = (&'static String, &'static crate::api::model::ShapeRef)> {
    let m = model();
    let input = m
        .operations
        .get(action)
        .and_then(|op| op.input.as_deref())
        .map(|name| m.shape(name));
    input.into_iter().flat_map(|s| s.members.iter())
}

fn value_name(shape: &'static Shape) -> &'static str {
    match shape.kind.as_str() {
        "list" => {
            let member = model().shape(&shape.member.as_ref().expect("list member").shape);
            value_name(member)
        }
        k => k,
    }
}

/// What `--help` says of an option: its type and, for structures, the shorthand.
fn type_help(shape: &Shape) -> String {
    let m = model();
    match shape.kind.as_str() {
        "list" => {
            let member = m.shape(&shape.member.as_ref().expect("list member").shape);
            match member.kind.as_str() {
                "structure" | "map" | "list" => format!(
                    "list of structures, each: {} (or a JSON list)",
                    params::syntax(member)
                ),
                k => format!("list of {k}s (several words, or a JSON list)"),
            }
        }
        "structure" | "map" => format!("structure: {} (or JSON)", params::syntax(shape)),
        "blob" => "blob: text, or fileb://PATH (sent base64-encoded)".to_string(),
        k => k.to_string(),
    }
}

/// What a verb's options make: the request and the API context's accelerator.
pub struct Call {
    pub request: Value,
    pub accel: AccelRequest,
}

/// The request of `action` from its parsed options: botocore's member names,
/// only the members the user gave.
pub(super) fn request(action: &str, sub: &ArgMatches) -> Result<Call, Failure> {
    let m = model();
    let mut request = Map::new();
    for (member, r) in input_members(action) {
        let shape = m.shape(&r.shape);
        let option = xform_name(member);
        let value = if shape.kind == "boolean" {
            if sub.get_flag(member) {
                Some(Value::Bool(true))
            } else if sub.get_flag(negative_id(member)) {
                Some(Value::Bool(false))
            } else {
                None
            }
        } else {
            let Some(words) = sub.get_many::<String>(member) else {
                continue;
            };
            let words: Vec<String> = words.cloned().collect();
            let blob = customs(action).any(|c| matches!(c, Custom::Base64Encode(x) if x == member));
            let paramfile =
                !customs(action).any(|c| matches!(c, Custom::NoParamfile(x) if x == member));
            Some(
                params::unpack(&words, shape, member, blob, paramfile).map_err(|e| match e {
                    ParamError::Parse(msg) => Failure::Param(option.clone(), msg),
                    ParamError::Validation(msg) => Failure::Validation(msg),
                })?,
            )
        };
        if let Some(v) = value {
            request.insert(member.clone(), v);
        }
    }
    let mut accel = AccelRequest::default();
    for c in customs(action) {
        match c {
            Custom::Count => count(&mut request, sub.get_one::<String>("count"))?,
            Custom::Accel => {
                if let Some(a) = sub.get_one::<String>("accel") {
                    accel = a.parse().map_err(|e: crate::machine::MachineError| {
                        Failure::Param("accel".into(), e.to_string())
                    })?;
                }
            }
            _ => {}
        }
    }
    Ok(Call {
        request: Value::Object(request),
        accel,
    })
}

/// `--count` with `--min-count` / `--max-count` into MinCount and MaxCount.
fn count(request: &mut Map<String, Value>, count: Option<&String>) -> Result<(), Failure> {
    let (min, max) = match count {
        None => (1, 1),
        Some(c) => {
            let (lo, hi) = c.split_once(':').unwrap_or((c, c));
            match (lo.trim().parse::<i64>(), hi.trim().parse::<i64>()) {
                (Ok(lo), Ok(hi)) => (lo, hi),
                _ => {
                    return Err(Failure::Param(
                        "count".into(),
                        "count parameter should be of form min[:max] (e.g. 1 or 1:10)".into(),
                    ))
                }
            }
        }
    };
    let given_min = request.get("MinCount").and_then(Value::as_i64);
    let min_count = given_min.unwrap_or(min);
    request
        .entry("MaxCount")
        .or_insert_with(|| Value::from(given_min.unwrap_or(min).max(max)));
    request.insert("MinCount".into(), Value::from(min_count));
    Ok(())
}

/// A result as the user sees it (the aws CLI's output customizations).
pub fn display(action: &str, mut result: Value) -> Value {
    for c in customs(action) {
        if let Custom::Base64Decode(member) = c {
            if let Some(Value::String(s)) = result.get_mut(member) {
                if let Some(text) = base64::engine::general_purpose::STANDARD
                    .decode(s.as_bytes())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                {
                    *s = text;
                }
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Parse `args` (after the verb) as the verb of `action` and build its request.
    fn req(action: &str, args: &[&str]) -> Result<Value, Failure> {
        let verb = cli_name(action);
        let m = command(action, verb, true)
            .try_get_matches_from(std::iter::once(verb).chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{action} {args:?}: {e}"));
        request(action, &m).map(|c| c.request)
    }

    fn param_error(r: Result<Value, Failure>) -> (String, String) {
        match r {
            Err(Failure::Param(o, m)) => (o, m),
            other => panic!("expected a parameter error, got {other:?}"),
        }
    }

    #[test]
    fn names_are_botocores() {
        // Checked against botocore.xform_name(name, '-').
        for (name, want) in [
            ("DescribeImages", "describe-images"),
            ("DryRun", "dry-run"),
            ("ImageIds", "image-ids"),
            ("Ipv6Addresses", "ipv6-addresses"),
            (
                "AmazonProvidedIpv6CidrBlock",
                "amazon-provided-ipv6-cidr-block",
            ),
            ("Ipv4IpamPoolId", "ipv4-ipam-pool-id"),
            ("S3ExportLocation", "s3-export-location"),
            ("HttpPutResponseHopLimit", "http-put-response-hop-limit"),
            (
                "InstanceInitiatedShutdownBehavior",
                "instance-initiated-shutdown-behavior",
            ),
            ("GetInstanceUefiData", "get-instance-uefi-data"),
            (
                "DescribeInstanceTypeOfferings",
                "describe-instance-type-offerings",
            ),
            ("SecurityGroupRuleIds", "security-group-rule-ids"),
            (
                "CreateCapacityReservationBySplitting",
                "create-capacity-reservation-by-splitting",
            ),
            ("ListACLs", "list-acls"),
        ] {
            assert_eq!(xform_name(name), want, "{name}");
        }
    }

    /// Every action is a verb, and every verb builds (clap checks its args).
    #[test]
    fn every_action_is_a_verb() {
        let verbs: Vec<&str> = all().map(|(_, v)| v).collect();
        assert!(verbs.contains(&"describe-images"));
        assert_eq!(verbs.len(), crate::api::ACTIONS.len());
        for (action, verb) in all() {
            command(action, verb, true).debug_assert();
        }
    }

    #[test]
    fn lists_of_strings_and_filters() {
        let r = req(
            "DescribeImages",
            &[
                "--image-ids",
                "ami-1",
                "ami-2",
                "--filters",
                "Name=name,Values=debian-*,ubuntu*",
                "Name=architecture,Values=arm64",
                "--owners",
                "self",
            ],
        )
        .unwrap();
        assert_eq!(
            r,
            json!({
                "Filters": [
                    {"Name": "name", "Values": ["debian-*", "ubuntu*"]},
                    {"Name": "architecture", "Values": ["arm64"]}
                ],
                "ImageIds": ["ami-1", "ami-2"],
                "Owners": ["self"]
            })
        );
        // Only what was given: nothing at all.
        assert_eq!(req("DescribeImages", &[]).unwrap(), json!({}));
        // Repeating a list option adds to it, as the old CLI did.
        let r = req(
            "DescribeImages",
            &[
                "--filters",
                "Name=a,Values=1",
                "--filters",
                "Name=b,Values=2",
            ],
        )
        .unwrap();
        assert_eq!(r["Filters"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn json_nested_structures_and_booleans() {
        let r = req(
            "RunInstances",
            &[
                "--image-id",
                "ami-1",
                "--block-device-mappings",
                r#"[{"DeviceName":"/dev/sdf","Ebs":{"VolumeSize":2}}]"#,
                "--metadata-options",
                "HttpTokens=required,HttpPutResponseHopLimit=2",
                "--tag-specifications",
                "ResourceType=instance,Tags=[{Key=a,Value=b}]",
                "--dry-run",
                "--no-dry-run",
                "--enable-api-termination",
            ],
        )
        .unwrap();
        assert_eq!(
            r,
            json!({
                "BlockDeviceMappings": [{"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 2}}],
                "DisableApiTermination": false,
                "DryRun": false,
                "ImageId": "ami-1",
                "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 2},
                "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "a", "Value": "b"}]}],
                "MinCount": 1,
                "MaxCount": 1
            })
        );
        let r = req("StopInstances", &["--instance-ids", "i-1", "--force"]).unwrap();
        assert_eq!(r, json!({"Force": true, "InstanceIds": ["i-1"]}));
    }

    #[test]
    fn integers_and_counts() {
        let r = req("DescribeInstanceTypes", &["--max-results", "5"]).unwrap();
        assert_eq!(r, json!({"MaxResults": 5}));
        let (option, message) =
            param_error(req("DescribeInstanceTypes", &["--max-results", "five"]));
        assert_eq!(option, "max-results");
        assert!(message.contains("'five'"), "{message}");
        let counts = |args: &[&str]| {
            let mut a = vec!["--image-id", "ami-1"];
            a.extend(args);
            let r = req("RunInstances", &a).unwrap();
            (
                r["MinCount"].as_i64().unwrap(),
                r["MaxCount"].as_i64().unwrap(),
            )
        };
        assert_eq!(counts(&[]), (1, 1));
        assert_eq!(counts(&["--count", "3"]), (3, 3));
        assert_eq!(counts(&["--count", "2:5"]), (2, 5));
        assert_eq!(counts(&["--min-count", "3"]), (3, 3));
        assert_eq!(counts(&["--min-count", "5", "--max-count", "2"]), (5, 2));
        assert_eq!(counts(&["--max-count", "4"]), (1, 4));
        let (option, _) = param_error(req("RunInstances", &["--image-id", "a", "--count", "x:y"]));
        assert_eq!(option, "count");
    }

    #[test]
    fn blobs_user_data_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s.sh");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let r = req(
            "RunInstances",
            &["--image-id", "a", "--user-data", "#!/bin/sh\necho hi\n"],
        )
        .unwrap();
        assert_eq!(r["UserData"], json!(b64("#!/bin/sh\necho hi\n")));
        let file = format!("file://{}", script.display());
        let r = req("RunInstances", &["--image-id", "a", "--user-data", &file]).unwrap();
        assert_eq!(r["UserData"], json!(b64("#!/bin/sh\necho hi\n")));
        // A blob member of the model: text, base64-encoded.
        let r = req(
            "ImportKeyPair",
            &[
                "--key-name",
                "k",
                "--public-key-material",
                "ssh-ed25519 AAAA x",
            ],
        )
        .unwrap();
        assert_eq!(r["PublicKeyMaterial"], json!(b64("ssh-ed25519 AAAA x")));
        // Any value from a file, a plain string too.
        let name = dir.path().join("name");
        std::fs::write(&name, "from-a-file").unwrap();
        let r = req(
            "DeleteKeyPair",
            &["--key-name", &format!("file://{}", name.display())],
        )
        .unwrap();
        assert_eq!(r, json!({"KeyName": "from-a-file"}));
        // ...but a URL member stays a URL.
        let r = req("RegisterImage", &["--name", "n", "--image-location", &file]).unwrap();
        assert_eq!(r["ImageLocation"], json!(file));
        let (option, message) = param_error(req(
            "DeleteKeyPair",
            &["--key-name", "file:///nonexistent/x"],
        ));
        assert_eq!(option, "key-name");
        assert!(message.contains("Unable to load paramfile"), "{message}");
    }

    #[test]
    fn single_value_structures_take_plain_text() {
        let r = req(
            "ModifyImageAttribute",
            &["--image-id", "ami-1", "--description", "My AMI"],
        )
        .unwrap();
        assert_eq!(r["Description"], json!({"Value": "My AMI"}));
        let r = req(
            "ModifyImageAttribute",
            &["--image-id", "ami-1", "--description", "Value=x"],
        )
        .unwrap();
        assert_eq!(r["Description"], json!({"Value": "x"}));
        let r = req(
            "ModifyImageAttribute",
            &[
                "--image-id",
                "ami-1",
                "--launch-permission",
                "Add=[{UserId=123456789012}]",
            ],
        )
        .unwrap();
        assert_eq!(
            r["LaunchPermission"],
            json!({"Add": [{"UserId": "123456789012"}]})
        );
    }

    #[test]
    fn console_output_is_decoded_tolerantly() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("boot log\n");
        let v = display(
            "GetConsoleOutput",
            json!({"InstanceId": "i-1", "Output": b64}),
        );
        assert_eq!(v["Output"], "boot log\n");
        let v = display(
            "GetConsoleOutput",
            json!({"Output": "plain text, not base64!"}),
        );
        assert_eq!(v["Output"], "plain text, not base64!");
        let v = display("DescribeImages", json!({"Output": b64}));
        assert_eq!(v["Output"], json!(b64));
    }
}
