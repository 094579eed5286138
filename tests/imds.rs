//! The instance metadata service as guests see it: real guests under TCG
//! fetch `http://169.254.169.254` through slirp's `guestfwd`, the relay and
//! their supervisor.

mod util;

use std::time::Duration;
use util::*;

const X86: &str = "amirun/tiny-x86_64";
const DEBIAN: &str = "debian-12-x86_64-local";

/// `run-instances` with extra environment; returns the instance id.
fn launch(env: &Env, envs: &[(&str, &str)], args: &[&str]) -> String {
    let r: Run = env
        .cmd()
        .arg("run-instances")
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "run-instances {args:?}:\n{}", r.stderr);
    r.json()["Instances"][0]["InstanceId"]
        .as_str()
        .unwrap()
        .to_string()
}

fn launch_spec(env: &Env, id: &str) -> serde_json::Value {
    let path = env.home().join("instances").join(id).join("launch.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The `-netdev` option of an instance's QEMU.
fn netdev(env: &Env, id: &str) -> String {
    let spec = launch_spec(env, id);
    let args: Vec<String> = serde_json::from_value(spec["args"].clone()).unwrap();
    let i = args.iter().position(|a| a == "-netdev").unwrap();
    args[i + 1].clone()
}

#[test]
fn tiny_guests_read_imds_as_their_metadata_options_allow() {
    let env = Env::with_images();
    let ami = env.ami(X86);
    // No NoCloud seed: the instance id and the user data come from IMDS.
    let script = "#!/bin/sh\necho user-data-from-imds-$(date +%Y)\n";
    let open = launch(
        &env,
        &[("AMIRUN_NOCLOUD_SEED", "0")],
        &["--image-id", &ami, "--user-data", script],
    );
    let required = launch(
        &env,
        &[],
        &[
            "--image-id",
            &ami,
            "--metadata-options",
            "HttpTokens=required",
        ],
    );
    let disabled = launch(
        &env,
        &[],
        &[
            "--image-id",
            &ami,
            "--metadata-options",
            "HttpEndpoint=disabled",
        ],
    );
    assert!(!env
        .home()
        .join("instances")
        .join(&open)
        .join("seed.img")
        .exists());
    let console = env.wait_console(&open, "amirun-tiny: ready", 240);
    assert!(
        console.contains(&format!("amirun-tiny: instance-id {open}")),
        "{console}"
    );
    assert!(console.contains("user-data-from-imds-"), "{console}");
    // IMDSv1 gets 401 when tokens are required, and nothing when disabled.
    for id in [&required, &disabled] {
        let console = env.wait_console(id, "amirun-tiny: ready", 240);
        assert!(
            console.contains("amirun-tiny: no answer from instance metadata service"),
            "{id}: {console}"
        );
        assert!(!console.contains("amirun-tiny: instance-id"), "{console}");
    }
    // Port 80 of 169.254.169.254 is always caught by the guestfwd (so a
    // guest never reaches the host's own metadata service), disabled or not.
    for id in [&open, &required, &disabled] {
        let net = netdev(&env, id);
        assert!(
            net.contains("guestfwd=tcp:169.254.169.254:80-cmd:"),
            "{net}"
        );
        assert!(net.contains("__imds-relay"), "{net}");
        assert!(net.contains("ipv6=off"), "{net}");
    }
    assert_eq!(
        launch_spec(&env, &disabled)["imds"]["http_endpoint"],
        "disabled"
    );
    assert!(env
        .home()
        .join("instances")
        .join(&required)
        .join("imds.sock")
        .exists());
    assert!(!env
        .home()
        .join("instances")
        .join(&disabled)
        .join("imds.sock")
        .exists());
    let i = env.instance(&required);
    assert_eq!(i["MetadataOptions"]["HttpTokens"], "required");
    for id in [&open, &required, &disabled] {
        env.ok(&["terminate-instances", "--instance-ids", id]);
    }
    for id in [&open, &required, &disabled] {
        env.wait("instance-terminated", id);
    }
}

/// Run a command in the guest over ssh (the key pair's private key, user `debian`).
fn ssh(env: &Env, id: &str, command: &str) -> Run {
    env.cmd()
        .args(["ssh", "-l", "debian", id, "--"])
        .arg(command)
        .output()
        .unwrap()
        .into()
}

#[test]
fn debian_cloud_init_finds_itself_through_the_ec2_datasource() {
    let env = Env::with_images();
    let ami = env.ami(DEBIAN);
    env.ok(&[
        "create-key-pair",
        "--key-name",
        "imds",
        "--key-type",
        "ed25519",
    ]);
    let id = launch(
        &env,
        &[("AMIRUN_NOCLOUD_SEED", "0")],
        &[
            "--image-id",
            &ami,
            "--key-name",
            "imds",
            "--metadata-options",
            "HttpTokens=required,HttpEndpoint=enabled",
        ],
    );
    let console = env.wait_console(&id, " finished at ", 600);
    assert!(console.contains("Datasource DataSourceEc2"), "{console}");
    // ssh with the key pair the Ec2 datasource installed.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let r = loop {
        let r = ssh(&env, &id, "cat /run/cloud-init/result.json; cloud-init query instance_id; cloud-init query region");
        if r.code == 0 || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_secs(3));
    };
    assert_eq!(r.code, 0, "ssh failed: {}", r.stderr);
    assert!(
        r.stdout.contains("\"datasource\": \"DataSourceEc2"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("{id}\nus-east-1")),
        "{}",
        r.stdout
    );
    // curl as on EC2 with HttpTokens=required: v1 is refused, a token works.
    let r = ssh(
        &env,
        &id,
        "M=http://169.254.169.254/latest; \
         curl -s -o /dev/null -w 'v1:%{http_code}\\n' $M/meta-data/instance-id; \
         T=$(curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' $M/api/token); \
         echo token-length:${#T}; \
         echo v2:$(curl -s -H \"X-aws-ec2-metadata-token: $T\" $M/meta-data/instance-id); \
         curl -s -o /dev/null -w 'bad-token:%{http_code}\\n' -H 'X-aws-ec2-metadata-token: nope' $M/meta-data/; \
         curl -s -o /dev/null -w 'no-ttl:%{http_code}\\n' -X PUT $M/api/token; \
         curl -s -H \"X-aws-ec2-metadata-token: $T\" $M/meta-data/public-keys/0/openssh-key; \
         curl -s -H \"X-aws-ec2-metadata-token: $T\" $M/meta-data/placement/availability-zone; echo; \
         curl -s -H \"X-aws-ec2-metadata-token: $T\" $M/dynamic/instance-identity/document",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = r.stdout;
    assert!(out.contains("v1:401\n"), "{out}");
    assert!(out.contains(&format!("v2:{id}\n")), "{out}");
    assert!(!out.contains("token-length:0\n"), "{out}");
    assert!(out.contains("bad-token:401\n"), "{out}");
    assert!(out.contains("no-ttl:400\n"), "{out}");
    assert!(out.contains("ssh-ed25519 "), "{out}");
    assert!(out.contains("us-east-1a\n"), "{out}");
    assert!(
        out.contains(&format!("\"instanceId\" : \"{id}\""))
            || out.contains(&format!("\"instanceId\": \"{id}\"")),
        "{out}"
    );
    env.ok(&["terminate-instances", "--instance-ids", &id]);
    env.wait("instance-terminated", &id);
}
