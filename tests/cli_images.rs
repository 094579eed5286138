//! The AMI catalog and registry through the CLI, as a user sees them:
//! describe-images with filters, import, register, share, copy, deregister,
//! snapshots, tags, errors, and concurrent use.

mod util;

use serde_json::Value;
use util::*;

fn ids(v: &Value) -> Vec<String> {
    v["Images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ImageId"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn catalog_images_appear_per_region_with_stable_ids() {
    let env = Env::new();
    let east = env.ok(&["describe-images", "--owners", "debian"]);
    let images = east["Images"].as_array().unwrap();
    assert!(images.len() >= 2, "{east}");
    for i in images {
        assert_eq!(i["Public"], true);
        assert_eq!(i["ImageOwnerAlias"], "debian");
        assert_eq!(i["State"], "available");
        assert_eq!(i["OwnerId"], "136693071363");
        assert!(i["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
            .as_str()
            .unwrap()
            .starts_with("snap-"));
    }
    let again = env.ok(&["describe-images", "--owners", "debian"]);
    assert_eq!(ids(&east), ids(&again));
    let west = env.ok(&[
        "--region",
        "eu-west-1",
        "describe-images",
        "--owners",
        "debian",
    ]);
    let (mut a, mut b) = (ids(&east), ids(&west));
    a.sort();
    b.sort();
    assert_eq!(a.len(), b.len());
    assert!(
        a.iter().all(|x| !b.contains(x)),
        "regions must have their own ids"
    );
    // Another state directory derives the same ids.
    let other = Env::new();
    let mut c = ids(&other.ok(&["describe-images", "--owners", "debian"]));
    c.sort();
    assert_eq!(a, c);
}

#[test]
fn filters_and_wildcards_select() {
    let env = Env::new();
    let v = env.ok(&[
        "describe-images",
        "--filters",
        "Name=name,Values=debian-1?-*",
        "Name=architecture,Values=arm64",
    ]);
    let images = v["Images"].as_array().unwrap();
    assert!(!images.is_empty());
    for i in images {
        assert_eq!(i["Architecture"], "arm64");
        assert!(i["Name"].as_str().unwrap().starts_with("debian-1"));
    }
    let json_form = env.ok(&[
        "describe-images",
        "--filters",
        r#"[{"Name":"name","Values":["debian-1?-*"]},{"Name":"architecture","Values":["arm64"]}]"#,
    ]);
    assert_eq!(ids(&v), ids(&json_form));
    let none = env.ok(&[
        "describe-images",
        "--filters",
        "Name=owner-alias,Values=nobody",
    ]);
    assert_eq!(none["Images"].as_array().unwrap().len(), 0);
    let public = env.ok(&[
        "describe-images",
        "--filters",
        "Name=is-public,Values=true",
        "Name=root-device-type,Values=ebs",
    ]);
    let all = env.ok(&["describe-images"]);
    assert_eq!(ids(&public).len(), ids(&all).len());
    let amazon = env.ok(&[
        "describe-images",
        "--owners",
        "amazon",
        "--filters",
        "Name=owner-id,Values=137112412989",
    ]);
    assert!(!ids(&amazon).is_empty());
    let q = env.ok(&[
        "describe-images",
        "--owners",
        "amazon",
        "--query",
        "Images[].ImageId",
    ]);
    let mut from_query: Vec<String> = serde_json::from_value(q).unwrap();
    let mut from_full = ids(&amazon);
    from_query.sort();
    from_full.sort();
    assert_eq!(from_query, from_full);
}

#[test]
fn table_and_text_output_are_readable() {
    let env = Env::new();
    let r = env.run(&[
        "describe-images",
        "--owners",
        "debian",
        "--output",
        "table",
        "--query",
        "Images[].{Id:ImageId,Name:Name}",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("DescribeImages"), "{}", r.stdout);
    assert!(r.stdout.contains("| Id "), "{}", r.stdout);
    assert!(r.stdout.contains("debian-12-amd64"), "{}", r.stdout);
    let t = env.run(&[
        "describe-images",
        "--owners",
        "debian",
        "--output",
        "text",
        "--query",
        "Images[].[ImageId,Name]",
    ]);
    assert_eq!(t.code, 0);
    let first = t.stdout.lines().next().unwrap();
    assert_eq!(first.split('\t').count(), 2, "{first}");
    assert!(first.starts_with("ami-"));
}

#[test]
fn import_raw_and_vmdk_yield_qcow2_blobs() {
    let env = Env::new();
    let raw = env.path("disk.raw");
    make_raw(&raw, 8);
    let vmdk = env.path("disk.vmdk");
    qemu_img_convert(&raw, "vmdk", &vmdk);
    for (file, fmt) in [(&raw, "raw"), (&vmdk, "vmdk")] {
        let out = env.ok(&[
            "import-image",
            "--description",
            &format!("from {fmt}"),
            "--disk-containers",
            &format!(
                "Url=file://{},Format={}",
                file.display(),
                fmt.to_uppercase()
            ),
        ]);
        assert_eq!(out["Status"], "completed");
        let id = out["ImageId"].as_str().unwrap().to_string();
        let d = env.ok(&["describe-images", "--image-ids", &id]);
        assert_eq!(d["Images"][0]["OwnerId"], "000000000000");
        assert_eq!(d["Images"][0]["Public"], false);
        let fetched = env.ok(&["fetch-image", "--image-id", &id]);
        let path = fetched["Disks"][0]["Path"].as_str().unwrap();
        assert_eq!(image_format(std::path::Path::new(path)), "qcow2");
        assert_eq!(fetched["Disks"][0]["VirtualSize"], 8 << 20);
        assert!(path.contains("/blobs/sha256/"));
        assert_eq!(
            sha256_file(std::path::Path::new(path)),
            fetched["Disks"][0]["Sha256"].as_str().unwrap()
        );
    }
    // Own AMIs show with --owners self.
    let mine = env.ok(&["describe-images", "--owners", "self"]);
    assert_eq!(ids(&mine).len(), 2);
}

#[test]
fn import_over_http_by_two_processes_downloads_once() {
    let env = Env::new();
    let served = env.path("www");
    std::fs::create_dir_all(&served).unwrap();
    make_raw(&served.join("disk.raw"), 32);
    let server = FileServer::start(served);
    let url = server.url("disk.raw");
    let container = format!("Url={url},Format=raw");
    let children: Vec<_> = (0..2)
        .map(|_| {
            env.cmd()
                .args(["import-image", "--disk-containers", &container])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Run> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap().into())
        .collect();
    for o in &outs {
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(
            o.stderr.is_empty(),
            "no progress bar in a pipe: {}",
            o.stderr
        );
    }
    assert_eq!(
        server.gets("disk.raw"),
        1,
        "the image must be downloaded once"
    );
    let a = outs[0].json()["ImageId"].as_str().unwrap().to_string();
    let b = outs[1].json()["ImageId"].as_str().unwrap().to_string();
    assert_ne!(a, b);
    let blobs = files_in(&env.home().join("blobs/sha256"));
    assert_eq!(blobs.len(), 1, "{blobs:?}");
}

#[test]
fn wrong_sha256_names_both_digests_and_keeps_nothing() {
    let env = Env::new();
    let raw = env.path("disk.raw");
    make_raw(&raw, 4);
    let actual = sha256_file(&raw);
    let wrong = "0".repeat(64);
    let catalog = env.path("bad.json");
    std::fs::write(
        &catalog,
        format!(
            r#"{{"format_version":1,"images":[{{"key":"bad","name":"bad-image","owner_alias":"test","architecture":"x86_64","source":{{"url":"file://{}","sha256":"{wrong}","format":"raw"}}}}]}}"#,
            raw.display()
        ),
    )
    .unwrap();
    let cat = catalog.to_str().unwrap();
    let id = env.ok(&[
        "--catalog",
        cat,
        "describe-images",
        "--filters",
        "Name=name,Values=bad-image",
        "--query",
        "Images[0].ImageId",
    ]);
    let id = id.as_str().unwrap();
    let r = env.fails(
        &["--catalog", cat, "fetch-image", "--image-id", id],
        "InvalidParameterValue",
    );
    assert!(r.stderr.contains(&wrong), "{}", r.stderr);
    assert!(r.stderr.contains(&actual), "{}", r.stderr);
    assert!(files_in(&env.home().join("blobs/sha256")).is_empty());
    assert!(files_in(&env.home().join("blobs/tmp")).is_empty());
    let snaps = env.ok(&[
        "--catalog",
        cat,
        "describe-snapshots",
        "--owner-ids",
        "self",
    ]);
    assert_eq!(snaps["Snapshots"].as_array().unwrap().len(), 0);
}

fn import(env: &Env, account: &str) -> (String, String) {
    let raw = env.path(&format!("disk-{account}.raw"));
    make_raw(&raw, 2);
    let out = env.ok(&[
        "--account",
        account,
        "import-image",
        "--disk-containers",
        &format!("Url=file://{}", raw.display()),
    ]);
    (
        out["ImageId"].as_str().unwrap().to_string(),
        out["SnapshotDetails"][0]["SnapshotId"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

#[test]
fn launch_permissions_control_visibility() {
    let env = Env::new();
    let a = "111111111111";
    let b = "222222222222";
    let (ami, _) = import(&env, a);
    let seen_by_b = |env: &Env| ids(&env.ok(&["--account", b, "describe-images", "--owners", a]));
    assert!(seen_by_b(&env).is_empty());
    env.fails(
        &["--account", b, "describe-images", "--image-ids", &ami],
        "InvalidAMIID.NotFound",
    );
    env.ok(&[
        "--account",
        a,
        "modify-image-attribute",
        "--image-id",
        &ami,
        "--launch-permission",
        &format!("Add=[{{UserId={b}}}]"),
    ]);
    assert_eq!(seen_by_b(&env), vec![ami.clone()]);
    let shared = env.ok(&[
        "--account",
        b,
        "describe-images",
        "--executable-users",
        "self",
    ]);
    assert_eq!(ids(&shared), vec![ami.clone()]);
    let attr = env.ok(&[
        "--account",
        a,
        "describe-image-attribute",
        "--image-id",
        &ami,
        "--attribute",
        "launchPermission",
    ]);
    assert_eq!(attr["LaunchPermissions"][0]["UserId"], b);
    // B cannot change A's AMI.
    env.fails(
        &[
            "--account",
            b,
            "modify-image-attribute",
            "--image-id",
            &ami,
            "--launch-permission",
            "Add=[{Group=all}]",
        ],
        "AuthFailure",
    );
    env.ok(&[
        "--account",
        a,
        "modify-image-attribute",
        "--image-id",
        &ami,
        "--launch-permission",
        &format!("Remove=[{{UserId={b}}}]"),
    ]);
    assert!(seen_by_b(&env).is_empty());
    // The aws CLI's other form: --operation-type add --user-groups all.
    env.ok(&[
        "--account",
        a,
        "modify-image-attribute",
        "--image-id",
        &ami,
        "--attribute",
        "launchPermission",
        "--operation-type",
        "add",
        "--user-groups",
        "all",
    ]);
    assert_eq!(seen_by_b(&env), vec![ami.clone()]);
    let c = ids(&env.ok(&[
        "--account",
        "333333333333",
        "describe-images",
        "--image-ids",
        &ami,
    ]));
    assert_eq!(c, vec![ami.clone()]);
    env.ok(&[
        "--account",
        a,
        "reset-image-attribute",
        "--image-id",
        &ami,
        "--attribute",
        "launchPermission",
    ]);
    assert!(seen_by_b(&env).is_empty());
    // Packer's ami_users: the structure and the same ids as UserId.N, with
    // no OperationType.
    env.ok(&[
        "--account",
        a,
        "modify-image-attribute",
        "--image-id",
        &ami,
        "--launch-permission",
        &format!("Add=[{{UserId={b}}}]"),
        "--user-ids",
        b,
    ]);
    assert_eq!(seen_by_b(&env), vec![ami.clone()]);
    // Without the structure, UserId.N still needs an OperationType.
    env.fails(
        &[
            "--account",
            a,
            "modify-image-attribute",
            "--image-id",
            &ami,
            "--user-ids",
            b,
        ],
        "MissingParameter",
    );
    env.ok(&[
        "--account",
        a,
        "reset-image-attribute",
        "--image-id",
        &ami,
        "--attribute",
        "launchPermission",
    ]);
    assert!(seen_by_b(&env).is_empty());
    env.ok(&[
        "--account",
        a,
        "modify-image-attribute",
        "--image-id",
        &ami,
        "--description",
        "Value=web server",
    ]);
    let d = env.ok(&[
        "--account",
        a,
        "describe-image-attribute",
        "--image-id",
        &ami,
        "--attribute",
        "description",
    ]);
    assert_eq!(d["Description"]["Value"], "web server");
}

#[test]
fn copy_image_makes_a_new_ami_in_the_target_region() {
    let env = Env::new();
    let (ami, snap) = import(&env, "000000000000");
    env.ok(&[
        "create-tags",
        "--resources",
        &ami,
        "--tags",
        "Key=Role,Value=web",
    ]);
    let out = env.ok(&[
        "--region",
        "eu-west-1",
        "copy-image",
        "--source-region",
        "us-east-1",
        "--source-image-id",
        &ami,
        "--name",
        "web-copy",
        "--copy-image-tags",
    ]);
    let copy = out["ImageId"].as_str().unwrap().to_string();
    assert_ne!(copy, ami);
    let there = env.ok(&[
        "--region",
        "eu-west-1",
        "describe-images",
        "--image-ids",
        &copy,
    ]);
    let img = &there["Images"][0];
    assert_eq!(img["Name"], "web-copy");
    assert_eq!(img["OwnerId"], "000000000000");
    assert_eq!(img["SourceImageId"], ami.as_str());
    assert_eq!(img["SourceImageRegion"], "us-east-1");
    assert_eq!(img["Tags"][0]["Key"], "Role");
    let new_snap = img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        .as_str()
        .unwrap();
    assert_ne!(new_snap, snap);
    env.fails(
        &["describe-images", "--image-ids", &copy],
        "InvalidAMIID.NotFound",
    );
    // A catalog AMI copied by another account is owned by that account.
    let deb = env.ok(&[
        "describe-images",
        "--owners",
        "debian",
        "--query",
        "Images[0].ImageId",
    ]);
    let out = env.ok(&[
        "--account",
        "444444444444",
        "--region",
        "eu-west-1",
        "copy-image",
        "--source-region",
        "us-east-1",
        "--source-image-id",
        deb.as_str().unwrap(),
        "--name",
        "my-debian",
    ]);
    let mine = env.ok(&[
        "--account",
        "444444444444",
        "--region",
        "eu-west-1",
        "describe-images",
        "--owners",
        "self",
    ]);
    assert_eq!(
        ids(&mine),
        vec![out["ImageId"].as_str().unwrap().to_string()]
    );
}

#[test]
fn deregister_keeps_snapshots_and_in_use_snapshots_cannot_be_deleted() {
    let env = Env::new();
    let (ami, snap) = import(&env, "000000000000");
    let r = env.fails(
        &["delete-snapshot", "--snapshot-id", &snap],
        "InvalidSnapshot.InUse",
    );
    assert!(r.stderr.contains(&ami), "{}", r.stderr);
    let out = env.ok(&["deregister-image", "--image-id", &ami]);
    assert_eq!(out["Return"], true);
    env.fails(
        &["describe-images", "--image-ids", &ami],
        "InvalidAMIID.NotFound",
    );
    let s = env.ok(&["describe-snapshots", "--snapshot-ids", &snap]);
    assert_eq!(s["Snapshots"][0]["State"], "completed");
    env.ok(&["delete-snapshot", "--snapshot-id", &snap]);
    env.fails(
        &["describe-snapshots", "--snapshot-ids", &snap],
        "InvalidSnapshot.NotFound",
    );
    // With --delete-associated-snapshots they go too.
    let (ami2, snap2) = import(&env, "000000000000");
    let out = env.ok(&[
        "deregister-image",
        "--image-id",
        &ami2,
        "--delete-associated-snapshots",
    ]);
    assert_eq!(
        out["DeleteSnapshotResults"][0]["SnapshotId"],
        snap2.as_str()
    );
    assert_eq!(out["DeleteSnapshotResults"][0]["ReturnCode"], "success");
    env.fails(
        &["describe-snapshots", "--snapshot-ids", &snap2],
        "InvalidSnapshot.NotFound",
    );
}

#[test]
fn register_image_from_snapshots_and_from_a_location() {
    let env = Env::new();
    let (_, snap) = import(&env, "000000000000");
    let bdm = format!("DeviceName=/dev/xvda,Ebs={{SnapshotId={snap},VolumeSize=4}}");
    let out = env.ok(&[
        "register-image",
        "--name",
        "from-snap",
        "--root-device-name",
        "/dev/xvda",
        "--block-device-mappings",
        &bdm,
        "--architecture",
        "x86_64",
    ]);
    let id = out["ImageId"].as_str().unwrap();
    let d = env.ok(&["describe-images", "--image-ids", id]);
    assert_eq!(d["Images"][0]["RootDeviceType"], "ebs");
    assert_eq!(
        d["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"],
        4
    );
    env.fails(
        &[
            "register-image",
            "--name",
            "from-snap",
            "--block-device-mappings",
            &bdm,
        ],
        "InvalidAMIName.Duplicate",
    );
    let raw = env.path("is.raw");
    make_raw(&raw, 2);
    let out = env.ok(&[
        "register-image",
        "--name",
        "store-backed",
        "--image-location",
        &format!("file://{}", raw.display()),
    ]);
    let id = out["ImageId"].as_str().unwrap();
    let d = env.ok(&["describe-images", "--image-ids", id]);
    assert_eq!(d["Images"][0]["RootDeviceType"], "instance-store");
    env.fails(
        &[
            "register-image",
            "--name",
            "bad-snap",
            "--block-device-mappings",
            "DeviceName=/dev/xvda,Ebs={SnapshotId=snap-0123456789abcdef0}",
        ],
        "InvalidSnapshot.NotFound",
    );
}

#[test]
fn tags_on_images_and_snapshots() {
    let env = Env::new();
    let (ami, snap) = import(&env, "000000000000");
    env.ok(&[
        "create-tags",
        "--resources",
        &ami,
        &snap,
        "--tags",
        "Key=Team,Value=infra",
        "Key=Tier,Value=gold",
    ]);
    let f = env.ok(&[
        "describe-images",
        "--owners",
        "self",
        "--filters",
        "Name=tag:Team,Values=infra",
    ]);
    assert_eq!(ids(&f), vec![ami.clone()]);
    let t = env.ok(&[
        "describe-tags",
        "--filters",
        "Name=resource-type,Values=snapshot",
    ]);
    assert_eq!(t["Tags"].as_array().unwrap().len(), 2);
    assert_eq!(t["Tags"][0]["ResourceId"], snap.as_str());
    env.ok(&["delete-tags", "--resources", &ami, "--tags", "Key=Team"]);
    let f = env.ok(&[
        "describe-images",
        "--owners",
        "self",
        "--filters",
        "Name=tag:Team,Values=*",
    ]);
    assert!(ids(&f).is_empty());
    let f = env.ok(&[
        "describe-images",
        "--owners",
        "self",
        "--filters",
        "Name=tag-key,Values=Tier",
    ]);
    assert_eq!(ids(&f), vec![ami.clone()]);
    // Catalog AMIs belong to their vendor: not ours to tag.
    let deb = env.ok(&[
        "describe-images",
        "--owners",
        "debian",
        "--query",
        "Images[0].ImageId",
    ]);
    env.fails(
        &[
            "create-tags",
            "--resources",
            deb.as_str().unwrap(),
            "--tags",
            "Key=a,Value=b",
        ],
        "InvalidAMIID.NotFound",
    );
}

#[test]
fn twenty_concurrent_registrations_all_succeed() {
    let env = Env::new();
    let raw = env.path("shared.raw");
    make_raw(&raw, 2);
    let children: Vec<_> = (0..20)
        .map(|i| {
            let mut c = env.cmd();
            if i % 2 == 0 {
                c.args([
                    "register-image",
                    "--name",
                    &format!("parallel-{i}"),
                    "--image-location",
                    &format!("file://{}", raw.display()),
                ]);
            } else {
                c.args([
                    "import-image",
                    "--disk-containers",
                    &format!("Url=file://{}", raw.display()),
                ]);
            }
            c.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut made = Vec::new();
    for c in children {
        let r: Run = c.wait_with_output().unwrap().into();
        assert_eq!(r.code, 0, "{}", r.stderr);
        made.push(r.json()["ImageId"].as_str().unwrap().to_string());
    }
    made.sort();
    made.dedup();
    assert_eq!(made.len(), 20);
    let mut mine = ids(&env.ok(&["describe-images", "--owners", "self"]));
    mine.sort();
    assert_eq!(mine, made);
    assert_eq!(files_in(&env.home().join("blobs/sha256")).len(), 1);
    let snaps = env.ok(&["describe-snapshots", "--owner-ids", "self"]);
    assert_eq!(snaps["Snapshots"].as_array().unwrap().len(), 10);
}

#[test]
fn bad_input_gets_ec2_errors_and_changes_nothing() {
    let env = Env::new();
    let before = env.ok(&["describe-images"]);
    env.fails(
        &["describe-images", "--image-ids", "ami-nothex"],
        "InvalidAMIID.Malformed",
    );
    env.fails(
        &["describe-images", "--image-ids", "ami-0123456789abcdef0"],
        "InvalidAMIID.NotFound",
    );
    let r = env.fails(
        &["describe-images", "--filters", "Name=colour,Values=red"],
        "InvalidParameterValue",
    );
    assert!(r.stderr.contains("colour"));
    assert_eq!(r.code, 254);
    let r = env.run(&["describe-images", "--filters", "Values=x,Name"]);
    assert_eq!(r.code, 252, "{}", r.stderr);
    env.fails(
        &[
            "import-image",
            "--disk-containers",
            "Url=file:///nonexistent/disk.raw",
        ],
        "InvalidParameterValue",
    );
    env.fails(
        &[
            "import-image",
            "--disk-containers",
            "Url=ftp://example.invalid/disk.raw",
        ],
        "InvalidParameterValue",
    );
    env.fails(
        &["delete-snapshot", "--snapshot-id", "snap-0123456789abcdef0"],
        "InvalidSnapshot.NotFound",
    );
    env.fails(
        &["delete-snapshot", "--snapshot-id", "snap-zz"],
        "InvalidSnapshotID.Malformed",
    );
    env.fails(
        &["deregister-image", "--image-id", "ami-0123456789abcdef0"],
        "InvalidAMIID.NotFound",
    );
    let deb = env.ok(&[
        "describe-images",
        "--owners",
        "debian",
        "--query",
        "Images[0].ImageId",
    ]);
    env.fails(
        &["deregister-image", "--image-id", deb.as_str().unwrap()],
        "AuthFailure",
    );
    let bad = env.path("broken.json");
    std::fs::write(&bad, "{\"format_version\": 1, \"images\": [").unwrap();
    let r = env.fails(
        &["--catalog", bad.to_str().unwrap(), "describe-images"],
        "InvalidManifest",
    );
    assert!(r.stderr.contains("broken.json"), "{}", r.stderr);
    env.fails(
        &["--region", "mars", "describe-images"],
        "InvalidParameterValue",
    );
    env.fails(
        &["--account", "12", "describe-images"],
        "InvalidParameterValue",
    );
    let after = env.ok(&["describe-images"]);
    assert_eq!(before, after);
    assert!(files_in(&env.home().join("blobs/sha256")).is_empty());
}

#[test]
fn a_terminal_gets_a_progress_bar() {
    let env = Env::new();
    let served = env.path("www");
    std::fs::create_dir_all(&served).unwrap();
    make_raw(&served.join("big.raw"), 48);
    let server = FileServer::start(served);
    // `script` gives amirun a pseudo-terminal, as a person's shell would.
    let cmd = format!(
        "{} import-image --disk-containers Url={} --query ImageId",
        env!("CARGO_BIN_EXE_amirun"),
        server.url("big.raw")
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("AMIRUN_HOME", env.home())
        .env("AMIRUN_RUNTIME_DIR", env.path("runtime"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Downloading big.raw"), "{text}");
    assert!(text.contains("MiB"), "{text}");
    assert!(text.contains("\"ami-"), "{text}");
}

#[test]
fn catalog_entries_can_pin_their_ids_per_region() {
    let env = Env::new();
    let raw = env.path("pinned.raw");
    make_raw(&raw, 1);
    let catalog = env.path("pinned.json");
    std::fs::write(
        &catalog,
        format!(
            r#"{{"format_version":1,"images":[{{"key":"pinned","name":"pinned-image","owner_alias":"amazon","architecture":"x86_64","regions":["us-east-1","eu-west-1"],"image_ids":{{"us-east-1":"ami-0abcdef1234567890"}},"source":{{"url":"file://{}","format":"raw"}}}}]}}"#,
            raw.display()
        ),
    )
    .unwrap();
    let cat = catalog.to_str().unwrap();
    let east = env.ok(&[
        "--catalog",
        cat,
        "describe-images",
        "--image-ids",
        "ami-0abcdef1234567890",
    ]);
    assert_eq!(east["Images"][0]["Name"], "pinned-image");
    assert_eq!(east["Images"][0]["ImageOwnerAlias"], "amazon");
    let west = env.ok(&[
        "--catalog",
        cat,
        "--region",
        "eu-west-1",
        "describe-images",
        "--filters",
        "Name=name,Values=pinned-image",
    ]);
    let west_id = west["Images"][0]["ImageId"].as_str().unwrap();
    assert_ne!(west_id, "ami-0abcdef1234567890");
    let none = env.ok(&[
        "--catalog",
        cat,
        "--region",
        "ap-south-1",
        "describe-images",
        "--filters",
        "Name=name,Values=pinned-image",
    ]);
    assert!(ids(&none).is_empty());
}

#[test]
fn regions_and_zones() {
    let env = Env::new();
    let r = env.ok(&["describe-regions", "--query", "Regions[].RegionName"]);
    assert!(
        r.as_array().unwrap().iter().any(|x| x == "eu-north-1"),
        "{r}"
    );
    let z = env.ok(&["--region", "ap-south-1", "describe-availability-zones"]);
    assert_eq!(z["AvailabilityZones"][0]["ZoneName"], "ap-south-1a");
    assert_eq!(z["AvailabilityZones"][0]["ZoneId"], "aps1-az1");
    env.fails(
        &["describe-regions", "--region-names", "mars-1"],
        "InvalidParameterValue",
    );
    env.fails(
        &["describe-availability-zones", "--zone-names", "us-east-1z"],
        "InvalidParameterValue",
    );
}
