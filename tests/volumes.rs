//! EBS volumes of their own, through `amirun serve` and the real aws CLI:
//! a data volume created, hot-plugged into a running tiny guest that finds
//! it by its serial (the volume id without its dash) and writes to it,
//! detached, plugged into a second guest that reads the data, grown online
//! (the guest sees the new size), snapshotted live, and deleted only once
//! detached; EC2's errors on the way.

mod util;

use std::time::{Duration, Instant};
use util::*;

const X86: &str = "amirun/tiny-x86_64";

/// User data for a guest that watches for the disk whose serial is
/// `serial` and prints what it finds on the console: on the first sight
/// it writes a marker (`write`) or reads one back, and it reports every
/// size change.
fn watcher(serial: &str, write: bool) -> String {
    let act = if write {
        "printf 'amirun-data-%s\\n' \"$S\" | dd of=\"$dev\" bs=512 count=1 conv=fsync 2>/dev/null\n\
         echo \"amirun-test: wrote $dev\""
    } else {
        "echo \"amirun-test: read $(head -c 64 \"$dev\" | head -n1)\""
    };
    format!(
        "#!/bin/sh\nS={serial}\n(\nseen=\nlast=\nwhile :; do\n  for d in /sys/block/vd*; do\n    \
         [ \"$(cat \"$d/serial\" 2>/dev/null)\" = \"$S\" ] || continue\n    dev=/dev/${{d##*/}}\n    \
         sz=$(cat \"$d/size\")\n    if [ -z \"$seen\" ]; then\n      \
         echo \"amirun-test: found $S at $dev size $sz\"\n      {act}\n      seen=1\n      last=$sz\n    fi\n    \
         if [ \"$sz\" != \"$last\" ]; then echo \"amirun-test: size $S $sz\"; last=$sz; fi\n  done\n  \
         sleep 0.2\ndone\n) </dev/null >/dev/console 2>&1 &\n"
    )
}

fn launch(env: &Env, server: &Serve, ami: &str, user_data: &str) -> String {
    let path = env.path(&format!("ud-{}.sh", user_data.len()));
    std::fs::write(&path, user_data).unwrap();
    let r = server.aws(&[
        "run-instances",
        "--image-id",
        ami,
        "--instance-type",
        "t3.micro",
        "--user-data",
        &format!("file://{}", path.display()),
    ]);
    r["Instances"][0]["InstanceId"]
        .as_str()
        .unwrap()
        .to_string()
}

fn volume(server: &Serve, id: &str) -> serde_json::Value {
    server.aws(&["describe-volumes", "--volume-ids", id])["Volumes"][0].clone()
}

#[test]
fn a_data_volume_moves_between_running_guests_grows_online_and_is_deleted_when_detached() {
    let env = Env::with_images();
    let server = Serve::start(&env);
    let ami = env.ami(X86);

    // EC2's checks before anything is made.
    server.aws_fails(
        &[
            "create-volume",
            "--size",
            "1",
            "--availability-zone",
            "us-east-1z",
        ],
        "InvalidParameterValue",
    );
    server.aws_fails(&["create-volume", "--size", "1"], "MissingParameter");
    server.aws_fails(
        &[
            "create-volume",
            "--size",
            "0",
            "--availability-zone",
            "us-east-1a",
        ],
        "InvalidParameterValue",
    );
    server.aws_fails(
        &[
            "create-volume",
            "--size",
            "4",
            "--volume-type",
            "io1",
            "--availability-zone",
            "us-east-1a",
        ],
        "MissingParameter",
    );
    server.aws_fails(
        &[
            "create-volume",
            "--size",
            "1",
            "--volume-type",
            "gp2",
            "--iops",
            "3000",
            "--availability-zone",
            "us-east-1a",
        ],
        "InvalidParameterCombination",
    );

    let created = server.aws(&[
        "create-volume",
        "--size",
        "1",
        "--volume-type",
        "gp3",
        "--availability-zone",
        "us-east-1a",
        "--tag-specifications",
        "ResourceType=volume,Tags=[{Key=Name,Value=data}]",
    ]);
    let vol = created["VolumeId"].as_str().unwrap().to_string();
    assert_eq!(created["Size"], 1);
    assert_eq!(created["Iops"], 3000);
    assert_eq!(created["Throughput"], 125);
    assert_eq!(created["AvailabilityZone"], "us-east-1a");
    assert_eq!(created["Tags"][0]["Value"], "data");
    server.aws(&["wait", "volume-available", "--volume-ids", &vol]);
    let serial = vol.replacen('-', "", 1);

    let a = launch(&env, &server, &ami, &watcher(&serial, true));
    let b = launch(&env, &server, &ami, &watcher(&serial, false));
    server.aws(&["wait", "instance-running", "--instance-ids", &a, &b]);
    env.wait_console(&a, "amirun-tiny: ready", 300);

    // Bad attachments.
    server.aws_fails(
        &[
            "attach-volume",
            "--volume-id",
            &vol,
            "--instance-id",
            &a,
            "--device",
            "/dev/vdb",
        ],
        "InvalidParameterValue",
    );
    server.aws_fails(
        &[
            "attach-volume",
            "--volume-id",
            &vol,
            "--instance-id",
            &a,
            "--device",
            "/dev/xvda",
        ],
        "InvalidParameterValue",
    );
    server.aws_fails(
        &[
            "attach-volume",
            "--volume-id",
            "vol-0123456789abcdef0",
            "--instance-id",
            &a,
            "--device",
            "/dev/sdf",
        ],
        "InvalidVolume.NotFound",
    );
    server.aws_fails(&["detach-volume", "--volume-id", &vol], "IncorrectState");

    // Hot-plugged into A: the guest finds it by its serial and writes.
    let t = Instant::now();
    let att = server.aws(&[
        "attach-volume",
        "--volume-id",
        &vol,
        "--instance-id",
        &a,
        "--device",
        "/dev/sdf",
    ]);
    assert_eq!(att["Device"], "/dev/sdf");
    assert_eq!(att["InstanceId"], a.as_str());
    server.aws(&["wait", "volume-in-use", "--volume-ids", &vol]);
    let console = env.wait_console(&a, "amirun-test: wrote", 120);
    eprintln!("attach -> guest wrote: {:.1} s", t.elapsed().as_secs_f64());
    assert!(
        console.contains(&format!("amirun-test: found {serial} at /dev/vd")),
        "{console}"
    );
    let v = volume(&server, &vol);
    assert_eq!(v["State"], "in-use");
    assert_eq!(v["Attachments"][0]["InstanceId"], a.as_str());
    assert_eq!(v["Attachments"][0]["Device"], "/dev/sdf");
    let i = server.aws(&["describe-instances", "--instance-ids", &a]);
    let bdm = &i["Reservations"][0]["Instances"][0]["BlockDeviceMappings"];
    assert!(
        bdm.as_array()
            .unwrap()
            .iter()
            .any(|m| m["Ebs"]["VolumeId"] == vol.as_str()),
        "{bdm}"
    );

    // Attached: not deletable, not attachable elsewhere.
    server.aws_fails(&["delete-volume", "--volume-id", &vol], "VolumeInUse");
    server.aws_fails(
        &[
            "attach-volume",
            "--volume-id",
            &vol,
            "--instance-id",
            &b,
            "--device",
            "/dev/sdf",
        ],
        "VolumeInUse",
    );
    server.aws_fails(
        &["detach-volume", "--volume-id", &vol, "--instance-id", &b],
        "InvalidAttachment.NotFound",
    );

    // Detached from A (the guest lets go), into B, which reads A's data.
    let t = Instant::now();
    let det = server.aws(&["detach-volume", "--volume-id", &vol]);
    assert_eq!(det["InstanceId"], a.as_str());
    server.aws(&["wait", "volume-available", "--volume-ids", &vol]);
    eprintln!("detach: {:.1} s", t.elapsed().as_secs_f64());
    server.aws(&[
        "attach-volume",
        "--volume-id",
        &vol,
        "--instance-id",
        &b,
        "--device",
        "/dev/sdg",
    ]);
    let console = env.wait_console(&b, "amirun-test: read", 120);
    assert!(
        console.contains(&format!("amirun-test: read amirun-data-{serial}")),
        "{console}"
    );

    // Grown online: EC2's limits first, then the guest sees 2 GiB.
    server.aws_fails(
        &["modify-volume", "--volume-id", &vol, "--size", "0"],
        "InvalidParameterValue",
    );
    server.aws_fails(
        &["modify-volume", "--volume-id", &vol, "--size", "1"],
        "InvalidParameterCombination",
    );
    let t = Instant::now();
    let m = server.aws(&["modify-volume", "--volume-id", &vol, "--size", "2"]);
    let m = &m["VolumeModification"];
    assert_eq!(m["OriginalSize"], 1);
    assert_eq!(m["TargetSize"], 2);
    let sectors = 2u64 * 1024 * 1024 * 1024 / 512;
    env.wait_console(&b, &format!("amirun-test: size {serial} {sectors}"), 60);
    eprintln!(
        "modify-volume -> guest sees 2 GiB: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mods = server.aws(&["describe-volumes-modifications", "--volume-ids", &vol]);
    let mods = &mods["VolumesModifications"][0];
    assert_eq!(mods["ModificationState"], "completed", "{mods}");
    assert_eq!(mods["TargetSize"], 2);
    assert_eq!(mods["TargetIops"], 3000);
    assert_eq!(volume(&server, &vol)["Size"], 2);

    // A live snapshot of the hot-plugged volume.
    let snap = server.aws(&["create-snapshot", "--volume-id", &vol]);
    assert_eq!(snap["State"], "completed", "{snap}");
    assert_eq!(snap["VolumeId"], vol.as_str());

    // Detached from B, then deleted; gone afterwards.
    server.aws(&["detach-volume", "--volume-id", &vol, "--force"]);
    server.aws(&["wait", "volume-available", "--volume-ids", &vol]);
    server.aws(&["delete-volume", "--volume-id", &vol]);
    server.aws_fails(
        &["describe-volumes", "--volume-ids", &vol],
        "InvalidVolume.NotFound",
    );
    server.aws_fails(
        &["delete-volume", "--volume-id", &vol],
        "InvalidVolume.NotFound",
    );
    assert!(!env
        .home()
        .join("volumes")
        .join(format!("{vol}.qcow2"))
        .exists());

    // What each volume action cost inside the server (its request log).
    for line in server.log().lines().filter(|l| {
        [
            "AttachVolume",
            "DetachVolume",
            "ModifyVolume",
            "CreateVolume",
            "CreateSnapshot",
        ]
        .iter()
        .any(|a| l.contains(&format!("action={a} ")) && l.contains("status=200"))
    }) {
        eprintln!("{line}");
    }
    server.aws(&["terminate-instances", "--instance-ids", &a, &b]);
    server.aws(&["wait", "instance-terminated", "--instance-ids", &a, &b]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !processes(&env).is_empty() {
        assert!(Instant::now() < deadline, "{:?}", processes(&env));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The QEMU argv of an instance of this environment, joined by spaces.
fn qemu_argv(env: &Env, instance_id: &str) -> String {
    let (pid, _, _) = processes(env)
        .into_iter()
        .find(|(_, id, qemu)| *qemu && id == instance_id)
        .unwrap_or_else(|| panic!("no QEMU of {instance_id}"));
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn volume_files(env: &Env) -> Vec<String> {
    TestHome::files_in(&env.home().join("volumes"))
}

/// Each volume operation killed at its worst moment (a failpoint SIGKILLs
/// the server); the next server's recovery settles it from the files and
/// the running guest, and nothing is lost or left behind. Then a volume
/// attached to a stopped instance is on its QEMU command line at the next
/// start, and terminate keeps it (DeleteOnTermination false).
#[test]
fn killed_volume_operations_are_settled_by_recovery() {
    let env = Env::with_images();
    let ami = env.ami(X86);
    let armed = |fp: &str| Serve::start_with(&env, &[("AMIRUN_FAILPOINTS", fp)]);
    let create = [
        "create-volume",
        "--size",
        "1",
        "--availability-zone",
        "us-east-1a",
    ];

    // Killed after the intent: the record goes, no file stays.
    armed("create-volume:intent").aws_kills(&create);
    let server = Serve::start(&env);
    assert_eq!(
        server.aws(&["describe-volumes"])["Volumes"],
        serde_json::json!([])
    );
    assert!(volume_files(&env).is_empty(), "{:?}", volume_files(&env));
    drop(server);
    // Killed after the file: the volume is made.
    armed("create-volume:file").aws_kills(&create);
    let server = Serve::start(&env);
    let vols = server.aws(&["describe-volumes"])["Volumes"].clone();
    assert_eq!(vols.as_array().unwrap().len(), 1, "{vols}");
    assert_eq!(vols[0]["State"], "available");
    let vol = vols[0]["VolumeId"].as_str().unwrap().to_string();
    let serial = vol.replacen('-', "", 1);

    let x = launch(&env, &server, &ami, &watcher(&serial, true));
    server.aws(&["wait", "instance-running", "--instance-ids", &x]);
    env.wait_console(&x, "amirun-tiny: ready", 300);
    drop(server);

    // Killed after the guest got the disk: recovery finishes the attach.
    let attach = [
        "attach-volume",
        "--volume-id",
        &vol,
        "--instance-id",
        &x,
        "--device",
        "/dev/sdh",
    ];
    armed("attach-volume:plugged").aws_kills(&attach);
    let server = Serve::start(&env);
    let v = volume(&server, &vol);
    assert_eq!(v["State"], "in-use", "{v}");
    assert_eq!(v["Attachments"][0]["Device"], "/dev/sdh");
    env.wait_console(&x, "amirun-test: wrote", 120);
    drop(server);

    // Killed after the online grow: recovery completes the modification.
    armed("modify-volume:grown").aws_kills(&["modify-volume", "--volume-id", &vol, "--size", "3"]);
    let server = Serve::start(&env);
    assert_eq!(volume(&server, &vol)["Size"], 3);
    let m = server.aws(&["describe-volumes-modifications"]);
    assert_eq!(
        m["VolumesModifications"][0]["ModificationState"], "completed",
        "{m}"
    );
    let sectors = 3u64 * 1024 * 1024 * 1024 / 512;
    env.wait_console(&x, &format!("amirun-test: size {serial} {sectors}"), 60);
    drop(server);

    // Killed before the guest was asked: the volume stays attached.
    armed("detach-volume:intent").aws_kills(&["detach-volume", "--volume-id", &vol]);
    let server = Serve::start(&env);
    assert_eq!(volume(&server, &vol)["State"], "in-use");
    server.aws(&["detach-volume", "--volume-id", &vol]);
    server.aws(&["wait", "volume-available", "--volume-ids", &vol]);

    // Attached while stopped: a disk of the next boot.
    server.aws(&["stop-instances", "--instance-ids", &x]);
    server.aws(&["wait", "instance-stopped", "--instance-ids", &x]);
    server.aws(&[
        "attach-volume",
        "--volume-id",
        &vol,
        "--instance-id",
        &x,
        "--device",
        "/dev/sdf",
    ]);
    assert_eq!(volume(&server, &vol)["State"], "in-use");
    server.aws(&["start-instances", "--instance-ids", &x]);
    server.aws(&["wait", "instance-running", "--instance-ids", &x]);
    let argv = qemu_argv(&env, &x);
    assert!(argv.contains(&format!("serial={serial}")), "{argv}");

    // Terminate keeps it (attached with DeleteOnTermination false).
    server.aws(&["terminate-instances", "--instance-ids", &x]);
    server.aws(&["wait", "instance-terminated", "--instance-ids", &x]);
    server.aws(&["wait", "volume-available", "--volume-ids", &vol]);
    drop(server);

    // Killed after the intent to delete: recovery finishes it.
    armed("delete-volume:intent").aws_kills(&["delete-volume", "--volume-id", &vol]);
    let server = Serve::start(&env);
    server.aws_fails(
        &["describe-volumes", "--volume-ids", &vol],
        "InvalidVolume.NotFound",
    );
    // The root volume of the terminated instance went with it.
    assert_eq!(
        server.aws(&["describe-volumes"])["Volumes"],
        serde_json::json!([])
    );
    assert!(volume_files(&env).is_empty(), "{:?}", volume_files(&env));
    assert!(processes(&env).is_empty(), "{:?}", processes(&env));
}
