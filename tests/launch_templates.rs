//! Launch templates through `amirun serve` and the real aws CLI: a template
//! with two versions; instances launched with `$Latest`, `$Default` and a
//! number (with a request member overriding the template) carry the right
//! AMI, type, user data and tags; a new version on a freshly baked AMI made
//! the default rolls the next launch onto it; EC2's errors on the way.

mod util;

use base64::Engine;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use util::*;

const X86: &str = "amirun/tiny-x86_64";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Write `data` to a file and return `file://…` for the aws CLI.
fn file_arg(env: &Env, name: &str, data: &Value) -> String {
    let p = env.path(name);
    std::fs::write(&p, data.to_string()).unwrap();
    format!("file://{}", p.display())
}

fn run(server: &Serve, args: &[&str]) -> Value {
    let mut all = vec!["run-instances"];
    all.extend_from_slice(args);
    server.aws(&all)["Instances"][0].clone()
}

fn tag<'a>(instance: &'a Value, key: &str) -> Option<&'a str> {
    instance["Tags"]
        .as_array()?
        .iter()
        .find(|t| t["Key"] == key)
        .and_then(|t| t["Value"].as_str())
}

fn describe(server: &Serve, id: &str) -> Value {
    server.aws(&["describe-instances", "--instance-ids", id])["Reservations"][0]["Instances"][0]
        .clone()
}

#[test]
fn template_versions_launch_and_roll_a_fleet_onto_a_baked_ami() {
    let env = Env::with_images();
    let server = Serve::start(&env);
    let ami = env.ami(X86);

    let v1 = json!({
        "ImageId": ami,
        "InstanceType": "t3.micro",
        "UserData": b64("#!/bin/sh\necho amirun-test: user data v1\n"),
        "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "Role", "Value": "web"}]}],
        "MetadataOptions": {"HttpTokens": "required"},
    });
    let created = server.aws(&[
        "create-launch-template",
        "--launch-template-name",
        "web",
        "--version-description",
        "first",
        "--launch-template-data",
        &file_arg(&env, "v1.json", &v1),
        "--tag-specifications",
        "ResourceType=launch-template,Tags=[{Key=Team,Value=ops}]",
    ])["LaunchTemplate"]
        .clone();
    let lt = created["LaunchTemplateId"].as_str().unwrap().to_string();
    assert!(lt.starts_with("lt-"), "{created}");
    assert_eq!(created["DefaultVersionNumber"], 1);
    assert_eq!(created["LatestVersionNumber"], 1);
    assert_eq!(created["Tags"][0]["Value"], "ops");

    // Syntax is checked at create time, names are unique.
    server.aws_fails(
        &[
            "create-launch-template",
            "--launch-template-name",
            "web",
            "--launch-template-data",
            &file_arg(&env, "dup.json", &json!({"InstanceType": "t3.micro"})),
        ],
        "InvalidLaunchTemplateName.AlreadyExistsException",
    );
    server.aws_fails(
        &[
            "create-launch-template",
            "--launch-template-name",
            "bad",
            "--launch-template-data",
            &file_arg(&env, "bad.json", &json!({"InstanceType": "t9.huge"})),
        ],
        "InvalidParameterValue",
    );

    // Version 2 from version 1: a bigger type and other user data, the rest inherited.
    let v2 = server.aws(&[
        "create-launch-template-version",
        "--launch-template-name",
        "web",
        "--source-version",
        "1",
        "--version-description",
        "second",
        "--launch-template-data",
        &file_arg(
            &env,
            "v2.json",
            &json!({
                "InstanceType": "t3.small",
                "UserData": b64("#!/bin/sh\necho amirun-test: user data v2\n"),
            }),
        ),
    ])["LaunchTemplateVersion"]
        .clone();
    assert_eq!(v2["VersionNumber"], 2);
    assert_eq!(v2["DefaultVersion"], false);
    assert_eq!(v2["LaunchTemplateData"]["ImageId"], ami.as_str());
    assert_eq!(v2["LaunchTemplateData"]["InstanceType"], "t3.small");
    assert_eq!(
        v2["LaunchTemplateData"]["TagSpecifications"][0]["Tags"][0]["Value"],
        "web"
    );

    let d = server.aws(&["describe-launch-templates", "--launch-template-ids", &lt]);
    assert_eq!(d["LaunchTemplates"][0]["LatestVersionNumber"], 2);
    assert_eq!(d["LaunchTemplates"][0]["DefaultVersionNumber"], 1);
    let vs = server.aws(&[
        "describe-launch-template-versions",
        "--launch-template-id",
        &lt,
    ])["LaunchTemplateVersions"]
        .clone();
    let numbers: Vec<i64> = vs
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["VersionNumber"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [2, 1]);
    let latest = server.aws(&[
        "describe-launch-template-versions",
        "--launch-template-name",
        "web",
        "--versions",
        "$Latest",
    ]);
    assert_eq!(latest["LaunchTemplateVersions"][0]["VersionNumber"], 2);
    let ranged = server.aws(&[
        "describe-launch-template-versions",
        "--launch-template-name",
        "web",
        "--min-version",
        "1",
        "--max-version",
        "1",
    ]);
    assert_eq!(
        ranged["LaunchTemplateVersions"].as_array().unwrap().len(),
        1
    );
    let default = server.aws(&[
        "describe-launch-template-versions",
        "--launch-template-name",
        "web",
        "--filters",
        "Name=is-default-version,Values=true",
    ]);
    assert_eq!(default["LaunchTemplateVersions"][0]["VersionNumber"], 1);
    server.aws_fails(
        &[
            "describe-launch-template-versions",
            "--launch-template-id",
            &lt,
            "--versions",
            "9",
        ],
        "InvalidLaunchTemplateId.VersionNotFound",
    );
    server.aws_fails(
        &[
            "describe-launch-templates",
            "--launch-template-names",
            "nope",
        ],
        "InvalidLaunchTemplateName.NotFoundException",
    );
    server.aws_fails(
        &[
            "describe-launch-templates",
            "--launch-template-ids",
            "lt-0123456789abcdef0",
        ],
        "InvalidLaunchTemplateId.NotFound",
    );

    // Launches: $Latest, $Default, and a number with the request overriding the type.
    let a = run(
        &server,
        &[
            "--launch-template",
            "LaunchTemplateName=web,Version=$Latest",
        ],
    );
    let b = run(
        &server,
        &[
            "--launch-template",
            &format!("LaunchTemplateId={lt},Version=$Default"),
        ],
    );
    let c = run(
        &server,
        &[
            "--launch-template",
            &format!("LaunchTemplateId={lt},Version=1"),
            "--instance-type",
            "t3.medium",
        ],
    );
    let ids: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|i| i["InstanceId"].as_str().unwrap().to_string())
        .collect();
    for (i, (ty, version)) in
        [&a, &b, &c]
            .iter()
            .zip([("t3.small", "2"), ("t3.micro", "1"), ("t3.medium", "1")])
    {
        assert_eq!(i["ImageId"], ami.as_str(), "{i}");
        assert_eq!(i["InstanceType"], ty, "{i}");
        let shown = describe(&server, i["InstanceId"].as_str().unwrap());
        assert_eq!(tag(&shown, "Role"), Some("web"), "{shown}");
        assert_eq!(tag(&shown, "aws:ec2launchtemplate:id"), Some(lt.as_str()));
        assert_eq!(tag(&shown, "aws:ec2launchtemplate:version"), Some(version));
        assert_eq!(shown["MetadataOptions"]["HttpTokens"], "required");
    }
    env.wait_console(&ids[0], "amirun-test: user data v2", 300);
    env.wait_console(&ids[1], "amirun-test: user data v1", 300);
    env.wait_console(&ids[2], "amirun-test: user data v1", 300);
    server.aws(&["terminate-instances", "--instance-ids", &ids[0], &ids[2]]);

    // Errors at launch time: the ids.
    server.aws_fails(
        &[
            "run-instances",
            "--launch-template",
            "LaunchTemplateName=web,Version=7",
        ],
        "InvalidLaunchTemplateId.VersionNotFound",
    );
    server.aws_fails(
        &[
            "run-instances",
            "--launch-template",
            "LaunchTemplateName=nope",
        ],
        "InvalidLaunchTemplateName.NotFoundException",
    );
    server.aws(&[
        "create-launch-template",
        "--launch-template-name",
        "no-image",
        "--launch-template-data",
        &file_arg(&env, "ni.json", &json!({"InstanceType": "t3.micro"})),
    ]);
    server.aws_fails(
        &[
            "run-instances",
            "--launch-template",
            "LaunchTemplateName=no-image",
        ],
        "MissingParameter",
    );
    server.aws(&[
        "create-launch-template",
        "--launch-template-name",
        "ghost-ami",
        "--launch-template-data",
        &file_arg(
            &env,
            "ga.json",
            &json!({"ImageId": "ami-0123456789abcdef0"}),
        ),
    ]);
    server.aws_fails(
        &[
            "run-instances",
            "--launch-template",
            "LaunchTemplateName=ghost-ami",
        ],
        "InvalidAMIID.NotFound",
    );

    // Bake a new AMI from the $Default instance, make it version 3 and the default.
    let baked = server.aws(&[
        "create-image",
        "--instance-id",
        &ids[1],
        "--name",
        "web-002",
        "--no-reboot",
    ])["ImageId"]
        .as_str()
        .unwrap()
        .to_string();
    server.aws(&["wait", "image-available", "--image-ids", &baked]);
    server.aws(&["terminate-instances", "--instance-ids", &ids[1]]);
    let v3 = server.aws(&[
        "create-launch-template-version",
        "--launch-template-id",
        &lt,
        "--source-version",
        "$Default",
        "--launch-template-data",
        &file_arg(&env, "v3.json", &json!({"ImageId": baked})),
    ]);
    assert_eq!(v3["LaunchTemplateVersion"]["VersionNumber"], 3);
    let m = server.aws(&[
        "modify-launch-template",
        "--launch-template-id",
        &lt,
        "--default-version",
        "3",
    ]);
    assert_eq!(m["LaunchTemplate"]["DefaultVersionNumber"], 3);
    let d = run(&server, &["--launch-template", "LaunchTemplateName=web"]);
    let d_id = d["InstanceId"].as_str().unwrap().to_string();
    assert_eq!(d["ImageId"], baked.as_str());
    assert_eq!(d["InstanceType"], "t3.micro");
    assert_eq!(
        tag(&describe(&server, &d_id), "aws:ec2launchtemplate:version"),
        Some("3")
    );
    // The baked disk remembers its first boot; the new instance runs v1's user data.
    let console = env.wait_console(&d_id, "amirun-test: user data v1", 300);
    assert!(console.contains("amirun-tiny: boot 2"), "{console}");

    // Versions: not the default; the template: gone with all of them.
    let del = server.aws(&[
        "delete-launch-template-versions",
        "--launch-template-id",
        &lt,
        "--versions",
        "3",
        "1",
        "9",
    ]);
    let ok = &del["SuccessfullyDeletedLaunchTemplateVersions"];
    assert_eq!(ok.as_array().unwrap().len(), 1, "{del}");
    assert_eq!(ok[0]["VersionNumber"], 1);
    let failed = del["UnsuccessfullyDeletedLaunchTemplateVersions"]
        .as_array()
        .unwrap();
    assert_eq!(failed.len(), 2, "{del}");
    assert_eq!(failed[0]["VersionNumber"], 3);
    assert!(
        failed[0]["ResponseError"]["Message"]
            .as_str()
            .unwrap()
            .contains("default"),
        "{del}"
    );
    assert_eq!(
        failed[1]["ResponseError"]["Code"],
        "launchTemplateVersionDoesNotExist"
    );
    server.aws(&["delete-launch-template", "--launch-template-name", "web"]);
    server.aws_fails(
        &["describe-launch-templates", "--launch-template-ids", &lt],
        "InvalidLaunchTemplateId.NotFound",
    );

    server.aws(&["terminate-instances", "--instance-ids", &d_id]);
    let all: Vec<&str> = ids
        .iter()
        .map(String::as_str)
        .chain([d_id.as_str()])
        .collect();
    let mut args = vec!["wait", "instance-terminated", "--instance-ids"];
    args.extend(all);
    server.aws(&args);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !processes(&env).is_empty() {
        assert!(Instant::now() < deadline, "{:?}", processes(&env));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// boto3 (unmodified) checks every volume and launch template response's
/// raw XML against botocore's model, with EC2's errors; no guest needed.
#[test]
fn boto3_sees_volumes_and_templates_as_botocore_models_them() {
    let env = Env::with_images();
    let server = Serve::start(&env);
    let stdout = server.python("volumes_and_templates", &[]);
    for action in [
        "CreateVolume",
        "ModifyVolume",
        "DescribeVolumesModifications",
        "DeleteVolume",
        "CreateLaunchTemplate",
        "CreateLaunchTemplateVersion",
        "DescribeLaunchTemplateVersions",
        "ModifyLaunchTemplate",
        "DeleteLaunchTemplateVersions",
        "DeleteLaunchTemplate",
    ] {
        assert!(stdout.contains(action), "{action} not checked: {stdout}");
    }
}
