//! amirun's OpenStack client against a real cloud: the all-in-one cloud of
//! `scripts/openstack-aio.sh` (clouds `amirun-aio` and `amirun-aio-demo` in
//! its clouds.yaml). Uploads the tiny image to Glance, shares it with the
//! demo project, boots it under Nova (a TCG guest through libvirt), reads
//! `amirun-tiny: ready` from its console log, stops, starts, reboots and
//! deletes it.
//!
//! It is `#[ignore]`d: the README's test command does not set up the cloud
//! (about 12 minutes of packages). Run it with `scripts/openstack-aio.sh &&
//! cargo test --test openstack -- --ignored`; a missing cloud then fails it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

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
