//! amirun's OpenStack client against a real cloud: the all-in-one cloud of
//! `scripts/openstack-aio.sh` (clouds `amirun-aio` and `amirun-aio-demo` in
//! its clouds.yaml). Uploads the tiny image to Glance, shares it with the
//! demo project, boots it under Nova (a TCG guest through libvirt), reads
//! `amirun-tiny: ready` from its console log, stops, starts, reboots and
//! deletes it.
//!
//! Its tests are `#[ignore]`d in a plain `cargo test`: they need the cloud.
//! The README's test command (`scripts/test.sh`) brings the cloud up in the
//! background and runs them last with `--ignored`; by hand,
//! `scripts/openstack-aio.sh && cargo test --test openstack -- --ignored`.
//! A missing cloud then fails them, never passes them.
//!
//! The other tests drive amirun in regions bound to the cloud (a
//! `regions.d` file in the test's own AMIRUN_HOME, account 222222222222 in
//! project demo), each region its own so they run side by side: the tiny AMI
//! booted under Nova with EC2's lifecycle and user data; an image made
//! after a change, shared with the second account, launched by both; 40
//! instances spread over the fake-driver hosts; and boto3 through `amirun
//! serve` doing the image-and-share story with the SDK's waiters.

mod util;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::Env;

use amirun::openstack::compute::{NewFlavor, NewServer, Nova, RebootKind};
use amirun::openstack::image::{Glance, NewImage};
use amirun::openstack::{CloudConfig, Session};

const SETUP: &str = "run scripts/openstack-aio.sh";

/// The test runs only when asked for (`--ignored`), and then a missing
/// cloud is a failure, never a silent pass.
fn skip(reason: &str) {
    panic!("{SETUP} first: {reason}");
}

fn tiny_image() -> PathBuf {
    let build = std::env::var_os("AMIRUN_BUILD_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("amirun/images"))
        })
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/amirun/images")
        });
    build.join("tiny-x86_64.qcow2")
}

/// Connect to a cloud of the all-in-one clouds.yaml, or say why not.
fn connect(cloud: &str) -> Result<Session, String> {
    let config = CloudConfig::from_clouds_yaml(cloud).map_err(|e| e.to_string())?;
    Session::connect(config).map_err(|e| format!("cannot log in to {cloud}: {e}"))
}

/// Deletes what the test made, whatever happens.
struct Cleanup<'a> {
    admin: &'a Session,
    server: Option<String>,
    image: Option<String>,
    flavor: Option<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let nova = Nova(self.admin);
        if let Some(id) = &self.server {
            let _ = nova.delete(id);
            let _ = nova.wait_deleted(id, Duration::from_secs(180));
        }
        if let Some(id) = &self.flavor {
            let _ = nova.delete_flavor(id);
        }
        if let Some(id) = &self.image {
            let _ = Glance(self.admin).delete(id);
        }
    }
}

fn step(start: Instant, what: &str) {
    eprintln!("[{:>6.1}s] {what}", start.elapsed().as_secs_f64());
}

#[test]
#[ignore = "needs an OpenStack cloud: scripts/openstack-aio.sh, then cargo test --test openstack -- --ignored"]
fn tiny_image_boots_under_nova_and_is_shared_through_glance() {
    let image_path = tiny_image();
    if !image_path.is_file() {
        return skip(&format!(
            "no {} (scripts/build-images.sh tiny x86_64 builds it)",
            image_path.display()
        ));
    }
    let admin = match connect("amirun-aio") {
        Ok(s) => s,
        Err(e) => return skip(&e),
    };
    let demo = match connect("amirun-aio-demo") {
        Ok(s) => s,
        Err(e) => return skip(&e),
    };
    let t0 = Instant::now();
    let tag = format!("amirun-test-{}", std::process::id());
    let mut cleanup = Cleanup {
        admin: &admin,
        server: None,
        image: None,
        flavor: None,
    };

    // Glance: create, upload, active, with the properties Nova reads.
    let glance = Glance(&admin);
    let image = glance
        .create(
            &NewImage::qcow2(&tag)
                .property("architecture", "x86_64")
                .property("hw_firmware_type", "bios")
                .property("hw_disk_bus", "virtio"),
        )
        .expect("create image");
    cleanup.image = Some(image.id.clone());
    assert_eq!(image.status, "queued");
    glance.upload(&image.id, &image_path).expect("upload image");
    let image = glance.show(&image.id).expect("show image");
    assert_eq!(image.status, "active");
    assert_eq!(
        image.size,
        Some(std::fs::metadata(&image_path).unwrap().len())
    );
    assert_eq!(image.property("architecture"), Some("x86_64"));
    step(t0, "image uploaded and active");

    // Launch permission: shared with the demo project, which accepts it.
    let demo_project = demo.project_id().expect("demo project id");
    assert!(Glance(&demo)
        .show(&image.id)
        .is_err_and(|e| e.is_not_found()));
    glance
        .set_visibility(&image.id, "shared")
        .expect("make shared");
    let member = glance
        .add_member(&image.id, &demo_project)
        .expect("add member");
    assert_eq!(member.status, "pending");
    Glance(&demo)
        .set_member_status(&image.id, &demo_project, "accepted")
        .expect("accept");
    let seen = Glance(&demo)
        .show(&image.id)
        .expect("demo sees the shared image");
    assert_eq!(
        seen.owner.as_deref(),
        Some(admin.project_id().unwrap().as_str())
    );
    let members = glance.members(&image.id).expect("members");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].status, "accepted");
    glance
        .remove_member(&image.id, &demo_project)
        .expect("remove member");
    assert!(Glance(&demo)
        .show(&image.id)
        .is_err_and(|e| e.is_not_found()));
    step(t0, "shared, accepted, unshared");

    // Nova: a flavor and a server without network.
    let nova = Nova(&admin);
    let flavor = nova
        .create_flavor(&NewFlavor {
            name: tag.clone(),
            vcpus: 1,
            ram: 256,
            disk: 1,
            ephemeral: 0,
        })
        .expect("create flavor");
    cleanup.flavor = Some(flavor.id.clone());
    assert!(nova.flavors().unwrap().iter().any(|f| f.id == flavor.id));

    let launched = nova
        .create(&NewServer {
            name: tag.clone(),
            image_id: Some(image.id.clone()),
            flavor_id: flavor.id.clone(),
            // The all-in-one cloud's zone of real (QEMU) guests.
            availability_zone: Some("aio".into()),
            count: 1,
            ..NewServer::default()
        })
        .expect("create server");
    let id = match launched {
        amirun::openstack::compute::Launched::Server(id) => id,
        other => panic!("one server, not {other:?}"),
    };
    cleanup.server = Some(id.clone());
    let server = nova
        .wait_status(&id, &["ACTIVE"], Duration::from_secs(300))
        .expect("server ACTIVE");
    assert_eq!(server.host.as_deref(), Some("aio"), "the QEMU host");
    step(t0, &format!("server {id} ACTIVE on {:?}", server.host));

    // The tiny image counts its boots on its root disk and ends each boot
    // with "amirun-tiny: ready".
    let booted = |nova: &Nova, n: u32| -> String {
        let needle = format!("amirun-tiny: boot {n}");
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let log = nova.console_log(&id, None).expect("console log");
            if let Some(at) = log.rfind(&needle) {
                if log[at..].contains("amirun-tiny: ready") {
                    return log;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no '{needle}' then 'amirun-tiny: ready' in the console log:\n{log}"
            );
            std::thread::sleep(Duration::from_secs(3));
        }
    };
    booted(&nova, 1);
    step(t0, "console log shows amirun-tiny: boot 1 ... ready");

    nova.stop(&id).expect("stop");
    nova.wait_status(&id, &["SHUTOFF"], Duration::from_secs(300))
        .expect("SHUTOFF");
    step(t0, "stopped");
    nova.start(&id).expect("start");
    nova.wait_status(&id, &["ACTIVE"], Duration::from_secs(300))
        .expect("ACTIVE again");
    // The root disk survived the stop: the boot counter goes on.
    booted(&nova, 2);
    step(t0, "started: boot 2 ... ready");
    nova.reboot(&id, RebootKind::Hard).expect("reboot");
    nova.wait_status(&id, &["ACTIVE"], Duration::from_secs(300))
        .expect("ACTIVE after reboot");
    booted(&nova, 3);
    step(t0, "rebooted: boot 3 ... ready");
    assert!(nova.list(false).unwrap().iter().any(|s| s.id == id));

    nova.delete(&id).expect("delete");
    nova.wait_deleted(&id, Duration::from_secs(180))
        .expect("deleted");
    cleanup.server = None;
    // (An admin may still show it, as DELETED; a list no longer has it.)
    let gone = Instant::now() + Duration::from_secs(60);
    while nova.list(false).unwrap().iter().any(|s| s.id == id) {
        assert!(
            Instant::now() < gone,
            "server {id} still listed after delete"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    step(t0, "deleted");
}

/// The clouds.yaml the all-in-one script writes.
const CLOUDS_YAML: &str = "/etc/openstack/clouds.yaml";

/// The second account of the bound regions: it acts in project `demo`.
const OTHER: &str = "222222222222";

/// An amirun installation whose `region` runs on the all-in-one cloud:
/// account 000000000000 (and any unlisted) in project `admin`, [`OTHER`]
/// in project `demo`.
fn bound_env(region: &str) -> Env {
    if !std::path::Path::new(CLOUDS_YAML).is_file() {
        skip(&format!("no {CLOUDS_YAML}"));
    }
    let env = Env::with_images();
    let dir = env.home().join("regions.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{region}.json")),
        format!(
            r#"{{"region": "{region}", "backend": "openstack", "cloud": "amirun-aio", "clouds_yaml": "{CLOUDS_YAML}",
                 "accounts": {{"{OTHER}": "amirun-aio-demo"}}}}"#
        ),
    )
    .unwrap();
    env
}

/// `amirun --region R ARGS…`, which must succeed; its JSON.
fn amirun(env: &Env, region: &str, args: &[&str]) -> Value {
    let mut all = vec!["--region", region];
    all.extend_from_slice(args);
    env.ok(&all)
}

/// Instance id -> state name, as describe-instances shows them.
fn states(env: &Env, region: &str, ids: &[String]) -> BTreeMap<String, String> {
    let mut args = vec!["describe-instances", "--instance-ids"];
    args.extend(ids.iter().map(String::as_str));
    let v = amirun(env, region, &args);
    let mut out = BTreeMap::new();
    for r in v["Reservations"].as_array().unwrap() {
        for i in r["Instances"].as_array().unwrap() {
            out.insert(
                i["InstanceId"].as_str().unwrap().to_string(),
                i["State"]["Name"].as_str().unwrap().to_string(),
            );
        }
    }
    out
}

/// Poll describe-instances until every instance is in `want`.
fn wait_state(env: &Env, region: &str, ids: &[String], want: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let now = states(env, region, ids);
        if now.len() == ids.len() && now.values().all(|s| s == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not all {want} within {secs}s: {now:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Deletes, whatever happens, the Nova servers of the test's launch
/// groups (those named, and every reservation amirun shows either account
/// in the region) in both projects, and the Glance images amirun put
/// there for its region.
struct CloudCleanup<'a> {
    env: &'a Env,
    groups: Vec<String>,
    region: String,
}

impl<'a> CloudCleanup<'a> {
    fn new(env: &'a Env, region: &str) -> CloudCleanup<'a> {
        CloudCleanup {
            env,
            groups: Vec::new(),
            region: region.to_string(),
        }
    }
}

impl Drop for CloudCleanup<'_> {
    fn drop(&mut self) {
        let mut groups = self.groups.clone();
        for account in ["000000000000", OTHER] {
            let out = self.env.run(&[
                "--account",
                account,
                "--region",
                &self.region,
                "describe-instances",
                "--query",
                "Reservations[].ReservationId",
            ]);
            if let Ok(Value::Array(ids)) = serde_json::from_str::<Value>(&out.stdout) {
                groups.extend(
                    ids.iter()
                        .filter_map(Value::as_str)
                        .map(|r| format!("amirun-{r}")),
                );
            }
        }
        for cloud in ["amirun-aio", "amirun-aio-demo"] {
            let Ok(session) = connect(cloud) else {
                continue;
            };
            let nova = Nova(&session);
            if let Ok(servers) = nova.list(false) {
                for s in servers {
                    if s.metadata
                        .get("amirun:group")
                        .is_some_and(|g| groups.contains(g))
                    {
                        let _ = nova.delete(&s.id);
                    }
                }
            }
        }
        let Ok(admin) = connect("amirun-aio") else {
            return;
        };
        if let Ok(images) = Glance(&admin).list(None) {
            for i in images {
                if i.name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("amirun-ami-") && n.ends_with(&self.region))
                {
                    let _ = Glance(&admin).delete(&i.id);
                }
            }
        }
    }
}

/// The tiny x86_64 AMI as amirun describes it in `region`.
fn tiny_ami(env: &Env, region: &str) -> Value {
    amirun(
        env,
        region,
        &[
            "describe-images",
            "--filters",
            "Name=name,Values=amirun/tiny-x86_64",
            "--query",
            "Images[0].ImageId",
        ],
    )
}

fn wait_console(env: &Env, region: &str, id: &str, needle: &str, secs: u64) -> String {
    decoded_console_as(env, region, "000000000000", id, needle, secs)
}

/// Poll `account`'s get-console-output of `id` until `needle` and then the
/// ready line show; the console.
fn decoded_console_as(
    env: &Env,
    region: &str,
    account: &str,
    id: &str,
    needle: &str,
    secs: u64,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = amirun(
            env,
            region,
            &[
                "--account",
                account,
                "get-console-output",
                "--instance-id",
                id,
            ],
        );
        let c = v["Output"].as_str().unwrap_or_default().to_string();
        if let Some(at) = c.rfind(needle) {
            if c[at..].contains("amirun-tiny: ready") {
                return c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no '{needle}' then 'amirun-tiny: ready' on {id}'s console within {secs}s:\n{c}"
        );
        std::thread::sleep(Duration::from_secs(3));
    }
}

#[test]
#[ignore = "needs an OpenStack cloud: scripts/openstack-aio.sh, then cargo test --test openstack -- --ignored"]
fn amirun_region_on_openstack_runs_the_tiny_ami_with_ec2s_lifecycle() {
    const REGION: &str = "eu-west-1";
    let t0 = Instant::now();
    let env = bound_env(REGION);
    let mut cleanup = CloudCleanup::new(&env, REGION);
    let ami = tiny_ami(&env, REGION);
    let ami = ami
        .as_str()
        .expect("the tiny AMI in the bound region")
        .to_string();
    amirun(&env, REGION, &["create-key-pair", "--key-name", "os-key"]);
    let launched = amirun(
        &env,
        REGION,
        &[
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "t3.micro",
            "--key-name",
            "os-key",
            "--user-data",
            "#!/bin/sh\necho hello from user data\n",
            "--tag-specifications",
            "ResourceType=instance,Tags=[{Key=Name,Value=on-nova}]",
        ],
    );
    let reservation = launched["ReservationId"].as_str().unwrap().to_string();
    cleanup.groups.push(format!("amirun-{reservation}"));
    let id = launched["Instances"][0]["InstanceId"]
        .as_str()
        .unwrap()
        .to_string();
    step(
        t0,
        &format!("run-instances: {id} (AMI published to Glance)"),
    );
    let ids = vec![id.clone()];
    wait_state(&env, REGION, &ids, "running", 300);
    let shown = amirun(&env, REGION, &["describe-instances", "--instance-ids", &id]);
    let i = &shown["Reservations"][0]["Instances"][0];
    assert_eq!(i["InstanceType"], "t3.micro");
    assert_eq!(i["ImageId"], ami.as_str());
    assert_eq!(i["KeyName"], "os-key");
    assert_eq!(i["Tags"][0]["Value"], "on-nova");
    assert_eq!(i["Placement"]["AvailabilityZone"], "aio");
    // Tags are amirun's, on the remote instance as on a local one.
    amirun(
        &env,
        REGION,
        &[
            "create-tags",
            "--resources",
            &id,
            "--tags",
            "Key=stage,Value=test",
        ],
    );
    let tagged = amirun(
        &env,
        REGION,
        &[
            "describe-instances",
            "--filters",
            "Name=tag:stage,Values=test",
            "--query",
            "Reservations[].Instances[].InstanceId",
        ],
    );
    assert_eq!(tagged, serde_json::json!([id]));
    // What needs the local engine is refused there, not answered from local state.
    let r = env.fails(
        &[
            "--region",
            REGION,
            "describe-instance-status",
            "--instance-ids",
            &id,
        ],
        "UnsupportedOperation",
    );
    assert!(r.stderr.contains(REGION), "{}", r.stderr);
    env.fails(
        &[
            "--region",
            REGION,
            "create-volume",
            "--size",
            "1",
            "--availability-zone",
            "aio",
        ],
        "UnsupportedOperation",
    );
    step(t0, "running; tagged; volumes and instance status refused");

    // Nova has the server, with the key pair amirun imported.
    let admin = connect("amirun-aio").unwrap_or_else(|e| panic!("{SETUP} first: {e}"));
    let nova = Nova(&admin);
    let server = nova
        .list(false)
        .unwrap()
        .into_iter()
        .find(|s| s.metadata.get("amirun:group") == Some(&format!("amirun-{reservation}")))
        .expect("the Nova server of the reservation");
    assert_eq!(server.host.as_deref(), Some("aio"));
    assert!(nova
        .keypair("amirun-000000000000-os-key")
        .unwrap()
        .is_some());

    let c = wait_console(&env, REGION, &id, "amirun-tiny: boot 1", 300);
    // User data reaches the guest on Nova's config drive.
    assert!(c.contains("amirun-tiny: config drive"), "{c}");
    assert!(c.contains("hello from user data"), "{c}");
    step(
        t0,
        "get-console-output: amirun-tiny: boot 1 ... user data ... ready",
    );

    // EC2's rules: a running instance cannot start, an unknown one is not found.
    let r = env.fails(
        &[
            "--region",
            REGION,
            "reboot-instances",
            "--instance-ids",
            "i-0123456789abcdef0",
        ],
        "InvalidInstanceID.NotFound",
    );
    assert!(r.stderr.contains("i-0123456789abcdef0"), "{}", r.stderr);

    amirun(&env, REGION, &["stop-instances", "--instance-ids", &id]);
    wait_state(&env, REGION, &ids, "stopped", 300);
    step(t0, "stopped");
    amirun(&env, REGION, &["start-instances", "--instance-ids", &id]);
    wait_state(&env, REGION, &ids, "running", 300);
    // The root disk survived the stop: the tiny image counts its boots there.
    wait_console(&env, REGION, &id, "amirun-tiny: boot 2", 300);
    step(t0, "started again: amirun-tiny: boot 2 ... ready");

    let t = amirun(
        &env,
        REGION,
        &["terminate-instances", "--instance-ids", &id],
    );
    assert_eq!(
        t["TerminatingInstances"][0]["PreviousState"]["Name"],
        "running"
    );
    wait_state(&env, REGION, &ids, "terminated", 300);
    assert!(!nova.list(false).unwrap().iter().any(|s| s.id == server.id));
    step(t0, "terminated; the Nova server is gone");
}

#[test]
#[ignore = "needs an OpenStack cloud: scripts/openstack-aio.sh, then cargo test --test openstack -- --ignored"]
fn forty_instances_spread_over_the_fake_hosts() {
    const REGION: &str = "eu-west-2";
    let t0 = Instant::now();
    let env = bound_env(REGION);
    let mut cleanup = CloudCleanup::new(&env, REGION);
    let ami = tiny_ami(&env, REGION);
    let ami = ami.as_str().unwrap().to_string();
    let launched = amirun(
        &env,
        REGION,
        &[
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "t3.nano",
            "--count",
            "40",
            "--placement",
            "AvailabilityZone=fake",
        ],
    );
    let reservation = launched["ReservationId"].as_str().unwrap().to_string();
    let group = format!("amirun-{reservation}");
    cleanup.groups.push(group.clone());
    let ids: Vec<String> = launched["Instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["InstanceId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 40);
    step(t0, "run-instances --count 40 returned");
    wait_state(&env, REGION, &ids, "running", 600);
    step(t0, "all 40 running");

    // Where Nova placed them (OS-EXT-SRV-ATTR:host).
    let admin = connect("amirun-aio").unwrap_or_else(|e| panic!("{SETUP} first: {e}"));
    let nova = Nova(&admin);
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    for s in nova.list(false).unwrap() {
        if s.metadata.get("amirun:group") == Some(&group) {
            *per_host
                .entry(s.host.clone().unwrap_or_else(|| "(none)".into()))
                .or_default() += 1;
        }
    }
    eprintln!("placement per host: {per_host:?}");
    assert_eq!(per_host.values().sum::<usize>(), 40, "{per_host:?}");
    assert!(
        per_host.keys().all(|h| h.starts_with("fake-")),
        "{per_host:?}"
    );
    assert!(per_host.len() >= 2, "not spread: {per_host:?}");

    // The zone is EC2's Placement.AvailabilityZone, and a filter.
    let in_zone = amirun(
        &env,
        REGION,
        &[
            "describe-instances",
            "--filters",
            "Name=availability-zone,Values=fake",
            "Name=instance-state-name,Values=running",
            "--query",
            "length(Reservations[].Instances[])",
        ],
    );
    assert_eq!(in_zone, 40);

    // EC2's rule: an instance-store root cannot stop (and nothing changes).
    let store_ami = amirun(
        &env,
        REGION,
        &[
            "describe-images",
            "--filters",
            "Name=name,Values=amirun/tiny-x86_64-instance-store",
            "--query",
            "Images[0].ImageId",
        ],
    );
    let launched = amirun(
        &env,
        REGION,
        &[
            "run-instances",
            "--image-id",
            store_ami.as_str().unwrap(),
            "--instance-type",
            "t3.nano",
            "--placement",
            "AvailabilityZone=fake",
        ],
    );
    cleanup.groups.push(format!(
        "amirun-{}",
        launched["ReservationId"].as_str().unwrap()
    ));
    let store_id = launched["Instances"][0]["InstanceId"]
        .as_str()
        .unwrap()
        .to_string();
    wait_state(
        &env,
        REGION,
        std::slice::from_ref(&store_id),
        "running",
        300,
    );
    let r = env.fails(
        &[
            "--region",
            REGION,
            "stop-instances",
            "--instance-ids",
            &store_id,
        ],
        "UnsupportedOperation",
    );
    assert!(r.stderr.contains("cannot be stopped"), "{}", r.stderr);
    assert_eq!(
        states(&env, REGION, std::slice::from_ref(&store_id))[&store_id],
        "running"
    );
    step(t0, "instance-store root: stop refused");

    let mut all = ids.clone();
    all.push(store_id);
    let mut args = vec!["terminate-instances", "--instance-ids"];
    args.extend(all.iter().map(String::as_str));
    let t = amirun(&env, REGION, &args);
    assert_eq!(t["TerminatingInstances"].as_array().unwrap().len(), 41);
    wait_state(&env, REGION, &all, "terminated", 600);
    let left = nova
        .list(false)
        .unwrap()
        .iter()
        .filter(|s| {
            s.metadata
                .get("amirun:group")
                .is_some_and(|g| cleanup.groups.contains(g))
        })
        .count();
    assert_eq!(left, 0, "Nova servers left behind");
    step(t0, "all 41 terminated; no Nova server left");
}

/// The Glance image amirun's AMI `ami` is in `region`, seen by the admin.
fn glance_image_of(ami: &str, region: &str) -> Option<amirun::openstack::image::Image> {
    let admin = connect("amirun-aio").unwrap_or_else(|e| panic!("{SETUP} first: {e}"));
    let name = format!("amirun-{ami}-{region}");
    Glance(&admin)
        .list(Some(&name))
        .unwrap()
        .into_iter()
        .find(|i| i.name.as_deref() == Some(&name))
}

/// Nova servers of project `cloud` that amirun launched in these groups.
fn servers_of(cloud: &str, groups: &[String]) -> Vec<amirun::openstack::compute::Server> {
    let session = connect(cloud).unwrap_or_else(|e| panic!("{SETUP} first: {e}"));
    Nova(&session)
        .list(false)
        .unwrap()
        .into_iter()
        .filter(|s| {
            s.metadata
                .get("amirun:group")
                .is_some_and(|g| groups.contains(g))
        })
        .collect()
}

fn launch_one(
    env: &Env,
    region: &str,
    account: &str,
    ami: &str,
    user_data: &str,
) -> (String, String) {
    let v = amirun(
        env,
        region,
        &[
            "--account",
            account,
            "run-instances",
            "--image-id",
            ami,
            "--instance-type",
            "t3.micro",
            "--user-data",
            user_data,
        ],
    );
    (
        v["Instances"][0]["InstanceId"]
            .as_str()
            .unwrap()
            .to_string(),
        format!("amirun-{}", v["ReservationId"].as_str().unwrap()),
    )
}

#[test]
#[ignore = "needs an OpenStack cloud: scripts/openstack-aio.sh, then cargo test --test openstack -- --ignored"]
fn create_image_after_a_change_and_share_it_with_a_second_account() {
    const REGION: &str = "eu-west-3";
    const MARK: &str = "#!/bin/sh\necho baked-on-nova > /root/marker\nsync\n";
    const SHOW: &str = "#!/bin/sh\necho \"marker: $(cat /root/marker 2>/dev/null || echo none)\"\n";
    let t0 = Instant::now();
    let env = bound_env(REGION);
    let mut cleanup = CloudCleanup::new(&env, REGION);
    let ami = tiny_ami(&env, REGION).as_str().unwrap().to_string();
    let (first, group) = launch_one(&env, REGION, "000000000000", &ami, MARK);
    cleanup.groups.push(group);
    wait_state(&env, REGION, std::slice::from_ref(&first), "running", 300);
    wait_console(&env, REGION, &first, "amirun-tiny: user-data exit 0", 300);
    step(
        t0,
        &format!("{first} ran its user data (wrote /root/marker)"),
    );

    // CreateImage: Nova snapshots the server (stopped for it, then started
    // again, as EC2 reboots); the AMI is pending until Glance has the data.
    let made = amirun(
        &env,
        REGION,
        &[
            "create-image",
            "--instance-id",
            &first,
            "--name",
            "baked-on-nova",
        ],
    );
    assert_eq!(made["Amirun"]["Mode"], "reboot", "{made}");
    let baked = made["ImageId"].as_str().unwrap().to_string();
    amirun(
        &env,
        REGION,
        &["wait", "image-available", "--image-ids", &baked],
    );
    let glance = glance_image_of(&baked, REGION).expect("the AMI's Glance image");
    assert_eq!(glance.status, "active");
    assert_eq!(glance.property("hw_cdrom_bus"), Some("scsi"), "{glance:?}");
    wait_console(&env, REGION, &first, "amirun-tiny: boot 2", 300);
    step(
        t0,
        &format!("create-image {baked}: available; {first} booted again"),
    );

    // Not shared yet: the other account does not see it.
    env.fails(
        &[
            "--account",
            OTHER,
            "--region",
            REGION,
            "describe-images",
            "--image-ids",
            &baked,
        ],
        "InvalidAMIID.NotFound",
    );
    let launch_permission = |op: &str| {
        amirun(
            &env,
            REGION,
            &[
                "modify-image-attribute",
                "--image-id",
                &baked,
                "--launch-permission",
                &format!("{op}=[{{UserId={OTHER}}}]"),
            ],
        )
    };
    launch_permission("Add");
    // The launch permission is a Glance membership that project demo accepted.
    let demo = connect("amirun-aio-demo").unwrap_or_else(|e| panic!("{SETUP} first: {e}"));
    let demo_project = demo.project_id().unwrap();
    let admin = connect("amirun-aio").unwrap();
    let members = Glance(&admin).members(&glance.id).unwrap();
    assert!(
        members
            .iter()
            .any(|m| m.member_id == demo_project && m.status == "accepted"),
        "{members:?}"
    );
    step(t0, "shared: project demo is an accepted member");

    let (mine, group) = launch_one(&env, REGION, "000000000000", &baked, SHOW);
    cleanup.groups.push(group);
    let (theirs, group) = launch_one(&env, REGION, OTHER, &baked, SHOW);
    cleanup.groups.push(group.clone());
    let on_demo = servers_of("amirun-aio-demo", std::slice::from_ref(&group));
    assert_eq!(
        on_demo.len(),
        1,
        "the other account's server runs in project demo"
    );
    assert_eq!(on_demo[0].tenant_id.as_deref(), Some(demo_project.as_str()));
    let c = wait_console(&env, REGION, &mine, "marker: baked-on-nova", 300);
    // The boot counter on the baked disk goes on: the image holds the disk
    // as it was after the first instance's first boot.
    assert!(c.contains("amirun-tiny: boot 2"), "{c}");
    let c = decoded_console_as(&env, REGION, OTHER, &theirs, "marker: baked-on-nova", 300);
    assert!(c.contains("amirun-tiny: boot 2"), "{c}");
    // Each account sees only its own instances.
    env.fails(
        &[
            "--region",
            REGION,
            "describe-instances",
            "--instance-ids",
            &theirs,
        ],
        "InvalidInstanceID.NotFound",
    );
    step(
        t0,
        &format!("{mine} and {OTHER}'s {theirs} boot the baked AMI: the marker is there"),
    );

    // Removing the permission ends the membership.
    launch_permission("Remove");
    let members = Glance(&admin).members(&glance.id).unwrap();
    assert!(
        !members.iter().any(|m| m.member_id == demo_project),
        "{members:?}"
    );

    let mut args = vec!["terminate-instances", "--instance-ids", &first, &mine];
    amirun(&env, REGION, &args);
    args.truncate(2);
    args.push(&theirs);
    amirun(
        &env,
        REGION,
        &[&["--account", OTHER][..], &args[..]].concat(),
    );
    wait_state(
        &env,
        REGION,
        &[first.clone(), mine.clone()],
        "terminated",
        300,
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    while !servers_of("amirun-aio-demo", &cleanup.groups).is_empty()
        || !servers_of("amirun-aio", &cleanup.groups).is_empty()
    {
        assert!(Instant::now() < deadline, "Nova servers left behind");
        std::thread::sleep(Duration::from_secs(2));
    }
    amirun(&env, REGION, &["deregister-image", "--image-id", &baked]);
    assert!(
        glance_image_of(&baked, REGION).is_none(),
        "the Glance image stays"
    );
    step(
        t0,
        "terminated all three (no Nova server left); deregistered (no Glance image left)",
    );
}

#[test]
#[ignore = "needs an OpenStack cloud: scripts/openstack-aio.sh, then cargo test --test openstack -- --ignored"]
fn boto3_through_amirun_serve_does_the_same_in_a_bound_region() {
    const REGION: &str = "eu-central-1";
    let env = bound_env(REGION);
    let _cleanup = CloudCleanup::new(&env, REGION);
    let server = util::Serve::start(&env);
    let out = server.python_script(
        "openstack_region.py",
        "lifecycle",
        &[("AMIRUN_REGION", REGION)],
    );
    let line = |prefix: &str| -> Vec<String> {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} line:\n{out}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let image = line("IMAGE ")[0].clone();
    let instances = line("INSTANCES ");
    assert_eq!(instances.len(), 2, "{out}");
    // What boto3 did is what the cloud has: no server, no image left.
    assert!(
        glance_image_of(&image, REGION).is_none(),
        "the Glance image stays"
    );
    let mut groups = Vec::new();
    for (account, id) in [("000000000000", &instances[0]), (OTHER, &instances[1])] {
        let v = amirun(
            &env,
            REGION,
            &[
                "--account",
                account,
                "describe-instances",
                "--instance-ids",
                id,
            ],
        );
        assert_eq!(
            v["Reservations"][0]["Instances"][0]["State"]["Name"], "terminated",
            "{v}"
        );
        groups.push(format!(
            "amirun-{}",
            v["Reservations"][0]["ReservationId"].as_str().unwrap()
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while !servers_of("amirun-aio-demo", &groups).is_empty()
        || !servers_of("amirun-aio", &groups).is_empty()
    {
        assert!(Instant::now() < deadline, "Nova servers left behind");
        std::thread::sleep(Duration::from_secs(2));
    }
    server.stop();
}

/// `amirun --region R ARGS…` killed at `failpoint` (as by `kill -9`).
fn amirun_killed_at(env: &Env, region: &str, failpoint: &str, args: &[&str]) {
    let out = env
        .cmd()
        .env("AMIRUN_FAILPOINTS", failpoint)
        .args(["--region", region])
        .args(args)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{args:?} survived failpoint {failpoint}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The one instance (or AMI) whose id the query answers, in `region`.
fn only_id(env: &Env, region: &str, args: &[&str]) -> String {
    let v = amirun(env, region, args);
    let ids = v.as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(ids.len(), 1, "{v}");
    ids[0].as_str().unwrap().to_string()
}

#[test]
#[ignore = "needs an OpenStack cloud: scripts/openstack-aio.sh, then cargo test --test openstack -- --ignored"]
fn launches_and_images_killed_midway_are_settled_from_the_cloud() {
    const REGION: &str = "ap-south-1";
    let t0 = Instant::now();
    let env = bound_env(REGION);
    let _cleanup = CloudCleanup::new(&env, REGION);
    let ami = tiny_ami(&env, REGION).as_str().unwrap().to_string();
    let run = [
        "run-instances",
        "--image-id",
        &ami,
        "--instance-type",
        "t3.micro",
    ];
    let all_ids = [
        "describe-instances",
        "--query",
        "Reservations[].Instances[].InstanceId",
    ];

    // Killed after the records, before Nova was asked: terminated, nothing made.
    amirun_killed_at(&env, REGION, "run-instances:remote-recorded", &run);
    let lost = only_id(&env, REGION, &all_ids);
    let v = amirun(
        &env,
        REGION,
        &["describe-instances", "--instance-ids", &lost],
    );
    let i = &v["Reservations"][0]["Instances"][0];
    assert_eq!(i["State"]["Name"], "terminated", "{v}");
    assert_eq!(i["StateReason"]["Code"], "Server.InternalError", "{v}");
    step(
        t0,
        "killed before Nova was asked: terminated, Server.InternalError",
    );

    // Killed once Nova took the server: the next reader binds it.
    amirun_killed_at(&env, REGION, "run-instances:remote-launched", &run);
    let id = only_id(
        &env,
        REGION,
        &[
            "describe-instances",
            "--filters",
            "Name=instance-state-name,Values=pending,running",
            "--query",
            "Reservations[].Instances[].InstanceId",
        ],
    );
    wait_state(&env, REGION, std::slice::from_ref(&id), "running", 300);
    wait_console(&env, REGION, &id, "amirun-tiny: boot 1", 300);
    step(
        t0,
        &format!("killed after Nova took it: {id} bound and running"),
    );

    // CreateImage killed before Nova was asked: the AMI is failed, no image made.
    let image_args = |name: &'static str| {
        vec![
            "create-image",
            "--instance-id",
            id.as_str(),
            "--name",
            name,
            "--no-reboot",
        ]
    };
    amirun_killed_at(
        &env,
        REGION,
        "create-image:remote-recorded",
        &image_args("killed-early"),
    );
    let early = only_id(
        &env,
        REGION,
        &[
            "describe-images",
            "--filters",
            "Name=name,Values=killed-early",
            "--query",
            "Images[].ImageId",
        ],
    );
    let v = amirun(&env, REGION, &["describe-images", "--image-ids", &early]);
    assert_eq!(v["Images"][0]["State"], "failed", "{v}");
    assert!(
        v["Images"][0]["StateReason"]["Message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Server.InternalError")),
        "{v}"
    );
    assert!(glance_image_of(&early, REGION).is_none());
    step(t0, "create-image killed before Nova was asked: failed");

    // Killed once Nova started the snapshot: the next reader adopts it.
    amirun_killed_at(
        &env,
        REGION,
        "create-image:remote-snapshot-started",
        &image_args("killed-late"),
    );
    let late = only_id(
        &env,
        REGION,
        &[
            "describe-images",
            "--filters",
            "Name=name,Values=killed-late",
            "--query",
            "Images[].ImageId",
        ],
    );
    amirun(
        &env,
        REGION,
        &["wait", "image-available", "--image-ids", &late],
    );
    assert!(glance_image_of(&late, REGION).is_some());
    step(
        t0,
        "create-image killed after Nova started it: adopted, available",
    );

    amirun(
        &env,
        REGION,
        &["terminate-instances", "--instance-ids", &id],
    );
    wait_state(&env, REGION, std::slice::from_ref(&id), "terminated", 300);
    for ami in [&early, &late] {
        amirun(&env, REGION, &["deregister-image", "--image-id", ami]);
    }
    assert!(glance_image_of(&late, REGION).is_none());
    step(t0, "terminated, deregistered: nothing left in the cloud");
}
