//! EC2 conformance (issue 17): instance types as EC2 describes them, EC2's
//! default type, key pair formats, fingerprints, tags and filters, EC2's
//! error codes and wording, the small read-only instance actions, catalog
//! pins, paging (boto3's paginators and the aws CLI's), every documented
//! describe filter, ClientToken idempotency, and CreateSnapshots. CLI
//! checks here; boto3 checks through `amirun serve` in
//! tests/python/conformance.py.

mod util;

use std::process::Command;
use util::*;

const X86: &str = "amirun/tiny-x86_64";
const ARM: &str = "amirun/tiny-arm64";

fn sh(script: &str) -> Vec<u8> {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `openssl … -c` prints `(stdin)= aa:bb:…` (or `MD5(stdin)= …`): the hex part.
fn openssl_digest(out: &[u8]) -> String {
    String::from_utf8_lossy(out)
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn instance_types_are_ec2s_and_paged() {
    let env = Env::new();
    let v = env.ok(&[
        "describe-instance-types",
        "--instance-types",
        "m1.small",
        "c3.large",
        "r3.large",
    ]);
    let t = &v["InstanceTypes"];
    assert_eq!(t.as_array().unwrap().len(), 3, "{v}");
    let m1 = t
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["InstanceType"] == "m1.small")
        .unwrap();
    assert_eq!(m1["VCpuInfo"]["DefaultVCpus"], 1);
    assert_eq!(m1["MemoryInfo"]["SizeInMiB"], 1740);
    assert_eq!(
        m1["ProcessorInfo"]["SupportedArchitectures"],
        serde_json::json!(["i386", "x86_64"])
    );
    assert_eq!(m1["InstanceStorageInfo"]["TotalSizeInGB"], 160);
    let c3 = t
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["InstanceType"] == "c3.large")
        .unwrap();
    assert_eq!(c3["InstanceStorageInfo"]["Disks"][0]["Count"], 2);
    assert_eq!(c3["InstanceStorageInfo"]["Disks"][0]["Type"], "ssd");
    let r = env.fails(
        &["describe-instance-types", "--instance-types", "x9.huge"],
        "InvalidInstanceType",
    );
    assert!(
        r.stderr
            .contains("The following supplied instance types do not exist: [x9.huge]"),
        "{}",
        r.stderr
    );
    // Filters.
    let prev = env.ok(&[
        "describe-instance-types",
        "--filters",
        "Name=current-generation,Values=false",
        "Name=instance-storage-supported,Values=true",
        "Name=vcpu-info.default-vcpus,Values=1",
        "--query",
        "InstanceTypes[].InstanceType",
    ]);
    let prev: Vec<&str> = prev
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(
        prev.contains(&"m1.small") && prev.contains(&"m3.medium"),
        "{prev:?}"
    );
    assert!(!prev.contains(&"t1.micro"), "{prev:?}");
    let mem = env.ok(&[
        "describe-instance-types",
        "--filters",
        "Name=memory-info.size-in-mib,Values=627",
        "--query",
        "InstanceTypes[].InstanceType",
    ]);
    assert_eq!(mem, serde_json::json!(["t1.micro"]));
    env.fails(
        &["describe-instance-types", "--filters", "Name=nope,Values=x"],
        "InvalidParameterValue",
    );
    // Paging: MaxResults / NextToken visit each type once.
    let all = env.ok(&[
        "describe-instance-types",
        "--query",
        "length(InstanceTypes)",
    ]);
    let all = all.as_u64().unwrap() as usize;
    assert!(all > 400, "{all}");
    let (mut seen, mut token) = (Vec::new(), None::<String>);
    loop {
        let mut args = vec!["describe-instance-types", "--max-results", "100"];
        if let Some(t) = &token {
            args.extend(["--next-token", t.as_str()]);
        }
        let page = env.ok(&args);
        let names = page["InstanceTypes"].as_array().unwrap();
        assert!(names.len() <= 100);
        seen.extend(
            names
                .iter()
                .map(|n| n["InstanceType"].as_str().unwrap().to_string()),
        );
        match page["NextToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (all, all));
    // Offerings.
    let zone = env.ok(&[
        "describe-instance-type-offerings",
        "--location-type",
        "availability-zone",
        "--filters",
        "Name=instance-type,Values=m1.small",
    ]);
    assert_eq!(
        zone["InstanceTypeOfferings"],
        serde_json::json!([{"InstanceType": "m1.small", "LocationType": "availability-zone", "Location": "us-east-1a"}])
    );
    let region = env.ok(&[
        "--region",
        "eu-west-1",
        "describe-instance-type-offerings",
        "--filters",
        "Name=location,Values=eu-west-1",
        "--query",
        "length(InstanceTypeOfferings)",
    ]);
    assert_eq!(region.as_u64().unwrap() as usize, all);
}

#[test]
fn key_pairs_fingerprints_formats_tags_and_filters() {
    let env = Env::new();
    // CreateKeyPair (RSA): SHA-1 of the DER PKCS#8 private key, as EC2.
    let k = env.ok(&[
        "create-key-pair",
        "--key-name",
        "made",
        "--tag-specifications",
        "ResourceType=key-pair,Tags=[{Key=team,Value=blue}]",
    ]);
    let pem = env.path("made.pem");
    std::fs::write(&pem, k["KeyMaterial"].as_str().unwrap()).unwrap();
    let expected = openssl_digest(&sh(&format!(
        "openssl pkcs8 -in {} -inform PEM -outform DER -topk8 -nocrypt | openssl sha1 -c",
        pem.display()
    )));
    let fp = k["KeyFingerprint"].as_str().unwrap();
    assert_eq!(fp.len(), 59, "{fp}");
    assert_eq!(fp, expected);
    assert_eq!(
        k["Tags"],
        serde_json::json!([{"Key": "team", "Value": "blue"}])
    );
    let kid = k["KeyPairId"].as_str().unwrap().to_string();
    // ImportKeyPair: OpenSSH, RFC 4716 and PEM give the same key and EC2's
    // MD5-of-public-key fingerprint.
    let key = env.path("user");
    sh(&format!(
        "ssh-keygen -q -t rsa -b 2048 -N '' -C '' -f {}",
        key.display()
    ));
    let md5 = openssl_digest(&sh(&format!(
        "ssh-keygen -e -m PKCS8 -f {}.pub | openssl pkey -pubin -outform DER | openssl md5 -c",
        key.display()
    )));
    std::fs::write(
        env.path("user.rfc4716"),
        sh(&format!("ssh-keygen -e -f {}.pub", key.display())),
    )
    .unwrap();
    std::fs::write(
        env.path("user.pem"),
        sh(&format!("ssh-keygen -e -m PKCS8 -f {}.pub", key.display())),
    )
    .unwrap();
    let mut fps = Vec::new();
    for (name, file) in [
        ("openssh", format!("{}.pub", key.display())),
        ("rfc4716", env.path("user.rfc4716").display().to_string()),
        ("pem", env.path("user.pem").display().to_string()),
    ] {
        let v = env.ok(&[
            "import-key-pair",
            "--key-name",
            name,
            "--public-key-material",
            &format!("fileb://{file}"),
        ]);
        fps.push(v["KeyFingerprint"].as_str().unwrap().to_string());
    }
    assert_eq!(
        fps,
        vec![md5.clone(), md5.clone(), md5],
        "fingerprints of one key in three formats"
    );
    let pubs = env.ok(&[
        "describe-key-pairs",
        "--key-names",
        "openssh",
        "rfc4716",
        "pem",
        "--include-public-key",
        "--query",
        "KeyPairs[].PublicKey",
    ]);
    let pubs: Vec<&str> = pubs
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        pubs.iter()
            .all(|p| p.split(' ').nth(1) == pubs[0].split(' ').nth(1)),
        "{pubs:?}"
    );
    env.fails(
        &[
            "import-key-pair",
            "--key-name",
            "junk",
            "--public-key-material",
            "not a key",
        ],
        "InvalidKey.Format",
    );
    // Filters, ids, tags.
    let by_tag = env.ok(&[
        "describe-key-pairs",
        "--filters",
        "Name=tag:team,Values=blue",
        "--query",
        "KeyPairs[].KeyName",
    ]);
    assert_eq!(by_tag, serde_json::json!(["made"]));
    let by_key = env.ok(&[
        "describe-key-pairs",
        "--filters",
        "Name=tag-key,Values=team",
        "Name=key-type,Values=rsa",
        "--query",
        "KeyPairs[].KeyName",
    ]);
    assert_eq!(by_key, serde_json::json!(["made"]));
    let by_fp = env.ok(&[
        "describe-key-pairs",
        "--filters",
        &format!("Name=fingerprint,Values={fp}"),
        "--query",
        "KeyPairs[].KeyName",
    ]);
    assert_eq!(by_fp, serde_json::json!(["made"]));
    let by_id = env.ok(&[
        "describe-key-pairs",
        "--key-pair-ids",
        &kid,
        "--query",
        "KeyPairs[].KeyName",
    ]);
    assert_eq!(by_id, serde_json::json!(["made"]));
    env.fails(
        &[
            "describe-key-pairs",
            "--key-pair-ids",
            "key-0123456789abcdef0",
        ],
        "InvalidKeyPair.NotFound",
    );
    let tags = env.ok(&[
        "describe-tags",
        "--filters",
        &format!("Name=resource-id,Values={kid}"),
    ]);
    assert_eq!(
        tags["Tags"],
        serde_json::json!([{"Key": "team", "ResourceId": kid, "ResourceType": "key-pair", "Value": "blue"}])
    );
    env.ok(&[
        "create-tags",
        "--resources",
        &kid,
        "--tags",
        "Key=env,Value=dev",
    ]);
    let n = env.ok(&[
        "describe-key-pairs",
        "--key-names",
        "made",
        "--query",
        "length(KeyPairs[0].Tags)",
    ]);
    assert_eq!(n, 2);
    env.ok(&["delete-key-pair", "--key-name", "made"]);
    let left = env.ok(&[
        "describe-tags",
        "--filters",
        &format!("Name=resource-id,Values={kid}"),
        "--query",
        "length(Tags)",
    ]);
    assert_eq!(left, 0);
    // EC2's errors and wording.
    env.fails(
        &[
            "create-tags",
            "--resources",
            "ami-blah",
            "--tags",
            "Key=a,Value=b",
        ],
        "InvalidID",
    );
    let r = env.fails(
        &[
            "describe-images",
            "--image-ids",
            "ami-00000000000000001",
            "ami-00000000000000002",
        ],
        "InvalidAMIID.NotFound",
    );
    assert!(
        r.stderr.contains(
            "The image ids '[ami-00000000000000001, ami-00000000000000002]' do not exist"
        ),
        "{}",
        r.stderr
    );
    let r = env.fails(
        &["describe-images", "--image-ids", "ami-00000000000000001"],
        "InvalidAMIID.NotFound",
    );
    assert!(
        r.stderr
            .contains("The image id '[ami-00000000000000001]' does not exist"),
        "{}",
        r.stderr
    );
}

#[test]
fn catalog_pins_of_one_id_twice_are_refused_naming_the_file() {
    let env = Env::new();
    let dir = env.home().join("catalog.d");
    std::fs::create_dir_all(&dir).unwrap();
    let entry = |key: &str, pins: &str| {
        format!(
            r#"{{"key":"{key}","name":"{key}","owner_alias":"amirun","architecture":"x86_64","source":{{"url":"file:///tmp/x.qcow2"}},"regions":["us-east-1","eu-west-1"],"image_ids":{{{pins}}}}}"#
        )
    };
    let twice = format!(
        r#"{{"format_version":1,"images":[{}]}}"#,
        entry(
            "dup",
            r#""us-east-1":"ami-0123456789abcdef0","eu-west-1":"ami-0123456789abcdef0""#
        )
    );
    std::fs::write(dir.join("twice.json"), &twice).unwrap();
    let ok = format!(
        r#"{{"format_version":1,"images":[{}]}}"#,
        entry("fine", r#""us-east-1":"ami-0123456789abcdef1""#)
    );
    std::fs::write(dir.join("a-fine.json"), &ok).unwrap();
    let clash = format!(
        r#"{{"format_version":1,"images":[{}]}}"#,
        entry("other", r#""eu-west-1":"ami-0123456789abcdef1""#)
    );
    std::fs::write(dir.join("b-clash.json"), &clash).unwrap();
    let r = env.run(&["describe-images", "--image-ids", "ami-0123456789abcdef1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["Images"][0]["Name"], "fine");
    for (file, id) in [
        ("twice.json", "ami-0123456789abcdef0"),
        ("b-clash.json", "ami-0123456789abcdef1"),
    ] {
        let line = r
            .stderr
            .lines()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("no warning names {file}:\n{}", r.stderr));
        assert!(
            line.contains(id) && line.contains("skipping catalog file"),
            "{line}"
        );
    }
    // The pinned id of the skipped file is not an image anywhere.
    env.fails(
        &[
            "--region",
            "eu-west-1",
            "describe-images",
            "--image-ids",
            "ami-0123456789abcdef0",
        ],
        "InvalidAMIID.NotFound",
    );
    // Named on the command line: an error naming the file and the id.
    std::fs::remove_file(dir.join("twice.json")).unwrap();
    std::fs::write(env.path("extra.json"), &twice).unwrap();
    let r = env.fails(
        &[
            "describe-images",
            "--catalog",
            env.path("extra.json").to_str().unwrap(),
        ],
        "",
    );
    assert!(
        r.stderr.contains("extra.json") && r.stderr.contains("ami-0123456789abcdef0"),
        "{}",
        r.stderr
    );
}

#[test]
fn api_shapes_and_errors_through_boto3() {
    let env = Env::new();
    let server = Serve::start(&env);
    server.python_script("conformance.py", "types", &[]);
    server.python_script("conformance.py", "keys", &[]);
}

#[test]
fn every_documented_filter_of_the_other_describes_is_taken() {
    let env = Env::new();
    let server = Serve::start(&env);
    let started = std::time::Instant::now();
    server.python_script("conformance.py", "filters", &[]);
    eprintln!("filters scenario: {:?}", started.elapsed());
}

#[test]
fn m1_small_is_the_default_boots_tiny_x86_and_arm64_needs_a_type_and_create_snapshots() {
    let env = Env::with_images();
    // An arm64 AMI with no type: EC2's mismatch error for m1.small.
    let r = env.fails(
        &["run-instances", "--image-id", &env.ami(ARM)],
        "InvalidParameterValue",
    );
    assert!(
        r.stderr.contains("The architecture 'x86_64,i386' of the specified instance type does not match the architecture 'arm64' of the specified AMI. Specify an instance type and an AMI that have matching architectures, and try again."),
        "{}",
        r.stderr
    );
    let id = env.run_instances(&["--image-id", &env.ami(X86), "--accel", "tcg"])[0].clone();
    let i = env.instance(&id);
    assert_eq!(i["InstanceType"], "m1.small");
    assert_eq!(i["MetadataOptions"]["HttpPutResponseHopLimit"], 1);
    env.wait("instance-running", &id);
    let console = env.wait_console(&id, "amirun-tiny: userspace up", 240);
    assert!(console.contains("amirun-tiny"), "{console}");
    // The guest sees m1.small's memory (1740 MiB, less what the kernel keeps).
    let launch =
        std::fs::read_to_string(env.home().join("instances").join(&id).join("launch.json"))
            .unwrap();
    assert!(launch.contains("1740M"), "{launch}");
    // CreateSnapshots: every EBS volume of the running guest at one point
    // (one pause), less what ExcludeBootVolume / ExcludeDataVolumeIds leave out.
    let root_vol = i["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
        .as_str()
        .unwrap()
        .to_string();
    let data_vol = env.ok(&[
        "create-volume",
        "--availability-zone",
        "us-east-1a",
        "--size",
        "1",
        "--tag-specifications",
        "ResourceType=volume,Tags=[{Key=from,Value=volume}]",
    ])["VolumeId"]
        .as_str()
        .unwrap()
        .to_string();
    env.ok(&[
        "attach-volume",
        "--volume-id",
        &data_vol,
        "--instance-id",
        &id,
        "--device",
        "/dev/sdf",
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while env.ok(&["describe-volumes", "--volume-ids", &data_vol])["Volumes"][0]["State"]
        != "in-use"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{data_vol} never in use"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let both = env.ok(&[
        "create-snapshots",
        "--instance-specification",
        &format!("InstanceId={id}"),
        "--description",
        "both",
        "--copy-tags-from-source",
        "volume",
    ]);
    let snaps = both["Snapshots"].as_array().unwrap();
    let mut vols: Vec<&str> = snaps
        .iter()
        .map(|s| s["VolumeId"].as_str().unwrap())
        .collect();
    vols.sort();
    let mut want = vec![root_vol.as_str(), data_vol.as_str()];
    want.sort();
    assert_eq!(vols, want, "{both}");
    for s in snaps {
        assert_eq!(s["State"], "completed", "{s}");
        assert_eq!(s["Description"], "both", "{s}");
    }
    let data_snap = snaps
        .iter()
        .find(|s| s["VolumeId"] == data_vol.as_str())
        .unwrap();
    assert_eq!(
        data_snap["Tags"],
        serde_json::json!([{"Key": "from", "Value": "volume"}])
    );
    let data_only = env.ok(&[
        "create-snapshots",
        "--instance-specification",
        &format!("InstanceId={id},ExcludeBootVolume=true"),
    ]);
    assert_eq!(
        data_only["Snapshots"].as_array().unwrap().len(),
        1,
        "{data_only}"
    );
    assert_eq!(data_only["Snapshots"][0]["VolumeId"], data_vol.as_str());
    env.fails(
        &[
            "create-snapshots",
            "--instance-specification",
            &format!("{{\"InstanceId\": \"{id}\", \"ExcludeDataVolumeIds\": [\"{root_vol}\"]}}"),
        ],
        "InvalidParameterValue",
    );
    env.fails(
        &[
            "create-snapshots",
            "--instance-specification",
            &format!("InstanceId={id},ExcludeBootVolume=true"),
            "--copy-tags-from-source",
            "instance",
        ],
        "InvalidParameterValue",
    );
    // GetInstanceUefiData: the vars store, base64, for a uefi instance
    // (the tiny AMI is uefi-preferred and OVMF is installed).
    assert_eq!(i["BootMode"], "uefi");
    let u = env.ok(&["get-instance-uefi-data", "--instance-id", &id]);
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD
        .decode(u["UefiData"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        data,
        std::fs::read(env.home().join("instances").join(&id).join("vars.fd")).unwrap()
    );
    // ... and an error for a legacy-bios one: the same disk as a legacy-bios catalog AMI.
    let catalog: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.home().join("catalog.d/local-images.json")).unwrap(),
    )
    .unwrap();
    let mut entry = catalog["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == X86)
        .unwrap()
        .clone();
    entry["key"] = "conformance-tiny-bios".into();
    entry["name"] = "conformance/tiny-bios".into();
    entry["boot_mode"] = "legacy-bios".into();
    std::fs::write(
        env.home().join("catalog.d/zz-bios.json"),
        serde_json::json!({"format_version": 1, "images": [entry]}).to_string(),
    )
    .unwrap();
    let bios_ami = env.ami("conformance/tiny-bios");
    let bios = env.run_instances(&["--image-id", &bios_ami, "--accel", "tcg"])[0].clone();
    assert_eq!(env.instance(&bios)["BootMode"], "legacy-bios");
    env.fails(
        &["get-instance-uefi-data", "--instance-id", &bios],
        "UnsupportedOperation",
    );
    env.fails(
        &[
            "describe-instance-credit-specifications",
            "--instance-ids",
            &id,
        ],
        "UnsupportedOperation",
    );
    let server = Serve::start(&env);
    server.python_script("conformance.py", "instance", &[("INSTANCE_ID", &id)]);
    drop(server);
    // A burstable type: EC2's default credit option, without booting it twice.
    let t2 = env.run_instances(&[
        "--image-id",
        &env.ami(X86),
        "--instance-type",
        "t2.micro",
        "--accel",
        "tcg",
    ])[0]
        .clone();
    let c = env.ok(&["describe-instance-credit-specifications"]);
    assert_eq!(
        c["InstanceCreditSpecifications"],
        serde_json::json!([{"InstanceId": t2, "CpuCredits": "standard"}])
    );
    // Instances and volumes take tags after launch, and describe-tags
    // filters them by resource type (Ansible tags instances this way).
    let vol = i["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
        .as_str()
        .unwrap()
        .to_string();
    env.ok(&[
        "create-tags",
        "--resources",
        &id,
        &vol,
        "--tags",
        "Key=role,Value=web",
    ]);
    assert!(env.instance(&id)["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["Key"] == "role" && t["Value"] == "web"));
    let tagged = env.ok(&[
        "describe-tags",
        "--filters",
        "Name=resource-type,Values=instance",
        "Name=key,Values=role",
    ]);
    assert_eq!(
        tagged["Tags"],
        serde_json::json!([{"Key": "role", "ResourceId": id, "ResourceType": "instance", "Value": "web"}])
    );
    let tagged = env.ok(&[
        "describe-tags",
        "--filters",
        "Name=resource-type,Values=volume",
    ]);
    // Sorted by resource id: the data volume's `from` tag may come first.
    assert!(
        tagged["Tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["ResourceId"] == vol.as_str() && t["Key"] == "role"),
        "{tagged}"
    );
    env.fails(
        &[
            "create-tags",
            "--resources",
            "i-0123456789abcdef0",
            "--tags",
            "Key=a,Value=b",
        ],
        "InvalidInstanceID.NotFound",
    );
    env.ok(&["terminate-instances", "--instance-ids", &id, &t2, &bios]);
    for i in [&id, &t2, &bios] {
        env.wait("instance-terminated", i);
    }
    // EC2's wording of a user's terminate.
    let reason = env.instance(&id)["StateTransitionReason"]
        .as_str()
        .unwrap()
        .to_string();
    let re = regex::Regex::new(r"^User initiated \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d GMT\)$").unwrap();
    assert!(re.is_match(&reason), "{reason}");
}

/// boto3's paginators see every instance, image, snapshot and volume
/// exactly once with small pages (instances launched and terminated at
/// once: terminated ones still show), and EC2's page limits and
/// combination rules hold.
#[test]
fn boto3_paginators_see_every_object_once() {
    let env = Env::with_images();
    let server = Serve::start(&env);
    let started = std::time::Instant::now();
    server.python_script("conformance.py", "paging", &[]);
    eprintln!("paging scenario: {:?}", started.elapsed());
    // The aws CLI pages by itself (`--page-size` sends MaxResults and
    // follows NextToken; `--max-items` stops early with a NextToken).
    let aws = util::Serve::start(&env);
    let ids = |v: &serde_json::Value, list: &str, id: &str| -> Vec<String> {
        let mut out: Vec<String> = match list {
            "Reservations" => v[list]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r["Instances"].as_array().unwrap().iter())
                .map(|i| i[id].as_str().unwrap().to_string())
                .collect(),
            _ => v[list]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i[id].as_str().unwrap().to_string())
                .collect(),
        };
        out.sort();
        out
    };
    for (verb, list, id, size) in [
        ("describe-instances", "Reservations", "InstanceId", "5"),
        ("describe-images", "Images", "ImageId", "6"),
        ("describe-volumes", "Volumes", "VolumeId", "5"),
    ] {
        let all = ids(&aws.aws(&[verb]), list, id);
        let paged = ids(&aws.aws(&[verb, "--page-size", size]), list, id);
        assert_eq!(paged, all, "{verb} --page-size {size}");
        let mut once = paged.clone();
        once.dedup();
        assert_eq!(once, paged, "{verb}: each object once");
        if verb == "describe-instances" {
            // --max-items counts reservations there.
            continue;
        }
        let first = aws.aws(&[verb, "--max-items", "3"]);
        assert_eq!(
            ids(&first, list, id).len(),
            3,
            "{verb} --max-items 3: {first}"
        );
        assert!(
            first["NextToken"].is_string(),
            "{verb} --max-items 3: {first}"
        );
    }
    drop(aws);
    // No guest outlives the test: every launched instance ends terminated.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let live = env.ok(&[
            "describe-instances",
            "--filters",
            "Name=instance-state-name,Values=pending,running,stopping,stopped,shutting-down",
        ]);
        if live["Reservations"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{live}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
