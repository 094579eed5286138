//! Hibernation as a user sees it: a real tiny guest launched with
//! `--hibernation-options Configured=true` is stopped with `--hibernate`
//! and started again; the process its user data started keeps counting on
//! the console, with no new boot. A saved state that was cut short, or
//! whose volume changed meanwhile (create-image), is never resumed: the
//! guest boots cleanly instead. Memory the guest freed goes back to the
//! host (free-page reporting), before and after a resume.

mod util;

use std::time::{Duration, Instant};
use util::*;

const X86: &str = "amirun/tiny-x86_64";
const X86_STORE: &str = "amirun/tiny-x86_64-instance-store";

/// User data: a background process that prints a counter and the guest's
/// uptime to the console every second, for as long as the guest runs.
const COUNTER: &str = "#!/bin/sh\n\
setsid sh -c 'n=0; while :; do n=$((n+1)); read -r up _ </proc/uptime; echo \"hib-counter $n up $up\"; sleep 1; done' </dev/null >/dev/console 2>&1 &\n\
echo hib-counter-started\n";

/// Every `(counter, uptime)` the counter printed in `console`.
fn counts(console: &str) -> Vec<(u64, f64)> {
    console
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("hib-counter ")? + "hib-counter ".len()..];
            let mut w = rest.split_whitespace();
            let n = w.next()?.parse().ok()?;
            (w.next()? == "up").then_some(())?;
            let up = w.next()?.parse().ok()?;
            Some((n, up))
        })
        .collect()
}

/// Poll `cond` until it holds; panics with `what` after `secs`.
fn poll<T>(what: &str, secs: u64, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn state_file(env: &Env, id: &str) -> std::path::PathBuf {
    amirun::paths::Paths::new(env.home(), env.path("runtime")).hibernation_state(id)
}

/// Launch a tiny guest enabled for hibernation whose user data counts on
/// the console; returns its id once the counter runs.
fn launch_counting(env: &Env) -> String {
    let script = env.path("counter.sh");
    std::fs::write(&script, COUNTER).unwrap();
    let id = env.run_instances(&[
        "--image-id",
        &env.ami(X86),
        "--instance-type",
        "t3.nano",
        "--hibernation-options",
        "Configured=true",
        "--user-data",
        &format!("file://{}", script.display()),
    ])[0]
        .clone();
    assert_eq!(
        env.instance(&id)["HibernationOptions"]["Configured"],
        true,
        "{}",
        env.instance(&id)
    );
    env.wait_console(&id, "amirun-tiny: ready", 300);
    env.wait_console(&id, "hib-counter 2 ", 120);
    poll("running", 120, || {
        (env.state(&id) == "running").then_some(())
    });
    id
}

/// `stop-instances --hibernate`, then poll describe-instances until
/// `stopped`; returns every state seen (stopping first, then stopped).
fn hibernate(env: &Env, id: &str) -> Vec<String> {
    let out = env.ok(&["stop-instances", "--instance-ids", id, "--hibernate"]);
    let first = out["StoppingInstances"][0]["CurrentState"]["Name"]
        .as_str()
        .unwrap()
        .to_string();
    let mut seen = vec![first];
    poll("stopped after hibernate", 180, || {
        let s = env.state(id);
        if seen.last() != Some(&s) {
            seen.push(s.clone());
        }
        (s == "stopped").then_some(())
    });
    let i = env.instance(id);
    assert_eq!(
        i["StateReason"]["Code"], "Client.UserInitiatedHibernate",
        "{i}"
    );
    assert_eq!(i["HibernationOptions"]["Configured"], true, "{i}");
    seen
}

#[test]
fn hibernated_guest_resumes_where_it_was_and_a_truncated_state_boots_cleanly() {
    let env = Env::with_images();
    let id = launch_counting(&env);

    // Hibernate: stopping -> stopped with EC2's hibernation reason, and a
    // complete state file next to the volumes.
    let seen = hibernate(&env, &id);
    assert_eq!(
        seen.first().map(String::as_str),
        Some("stopping"),
        "{seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some("stopped"), "{seen:?}");
    let state = state_file(&env, &id);
    assert!(state.exists(), "no state file at {}", state.display());
    // Every command's recovery pass sweeps orphans: a saved state is none.
    env.ok(&["describe-instances"]);
    assert!(state.exists(), "the sweep removed a valid saved state");
    let before = env.console(&id);
    let &(n0, up0) = counts(&before).last().expect("the counter printed");

    // Resume: running again, the same process counts on from where it was,
    // the guest's uptime goes on, nothing booted, and the state is gone.
    env.ok(&["start-instances", "--instance-ids", &id]);
    poll("running after resume", 120, || {
        (env.state(&id) == "running").then_some(())
    });
    let after = poll("the counter to go on after resume", 120, || {
        let c = env.console(&id);
        let tail = c.get(before.len()..).unwrap_or("").to_string();
        (counts(&tail).len() >= 2).then_some(tail)
    });
    let resumed = counts(&after);
    assert_eq!(
        resumed[0].0,
        n0 + 1,
        "the counter did not carry on from {n0}:\n{after}"
    );
    assert!(
        resumed[0].1 >= up0,
        "uptime went back: {up0} -> {resumed:?}"
    );
    assert!(resumed
        .windows(2)
        .all(|w| w[1].0 == w[0].0 + 1 && w[1].1 > w[0].1));
    for banner in ["amirun-tiny: userspace up", "amirun-tiny: boot ", "BdsDxe"] {
        assert!(
            !after.contains(banner),
            "'{banner}' after resume: the guest booted:\n{after}"
        );
    }
    assert!(!state.exists(), "the state file outlived its resume");

    // A state cut short is never resumed: the next start is a clean boot.
    hibernate(&env, &id);
    let len = std::fs::metadata(&state).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    env.ok(&["start-instances", "--instance-ids", &id]);
    env.wait_console(&id, "amirun-tiny: boot 2", 300);
    assert!(!state.exists(), "the truncated state was kept");
    env.ok(&["terminate-instances", "--instance-ids", &id]);
}

#[test]
fn create_image_of_a_hibernated_instance_invalidates_its_state() {
    let env = Env::with_images();
    let id = launch_counting(&env);
    hibernate(&env, &id);
    let state = state_file(&env, &id);
    assert!(state.exists());

    // create-image rewrites the volume's qcow2 chain (its file becomes the
    // snapshot's layer): the saved memory no longer matches the disk.
    env.ok(&[
        "create-image",
        "--instance-id",
        &id,
        "--name",
        "from-hibernated",
    ]);
    env.ok(&["start-instances", "--instance-ids", &id]);
    let console = env.wait_console(&id, "amirun-tiny: boot 2", 300);
    assert!(console.contains("amirun-tiny: userspace up"), "{console}");
    poll("running after a clean boot", 120, || {
        (env.state(&id) == "running").then_some(())
    });
    assert!(!state.exists(), "the invalidated state was kept");
    env.ok(&["terminate-instances", "--instance-ids", &id]);
    poll("terminated", 120, || {
        (env.state(&id) == "terminated").then_some(())
    });
}

#[test]
fn hibernation_is_refused_as_ec2_refuses_it() {
    let env = Env::with_images();
    // Instance-store root, and a root volume smaller than the memory.
    let r = env.fails(
        &[
            "run-instances",
            "--image-id",
            &env.ami(X86_STORE),
            "--hibernation-options",
            "Configured=true",
        ],
        "UnsupportedHibernationConfiguration",
    );
    assert!(r.stderr.contains("EBS root volume"), "{}", r.stderr);
    let r = env.fails(
        &[
            "run-instances",
            "--image-id",
            &env.ami(X86),
            "--instance-type",
            "t3.large",
            "--hibernation-options",
            "Configured=true",
        ],
        "UnsupportedHibernationConfiguration",
    );
    assert!(r.stderr.contains("at least as large"), "{}", r.stderr);
    assert!(
        env.ok(&["describe-instances"])["Reservations"]
            .as_array()
            .unwrap()
            .is_empty(),
        "a refused launch left an instance"
    );

    // An instance not launched for hibernation cannot hibernate.
    let id =
        env.run_instances(&["--image-id", &env.ami(X86), "--instance-type", "t3.nano"])[0].clone();
    assert_eq!(env.instance(&id)["HibernationOptions"]["Configured"], false);
    let r = env.fails(
        &["stop-instances", "--instance-ids", &id, "--hibernate"],
        "UnsupportedHibernationConfiguration",
    );
    assert!(r.stderr.contains(&id), "{}", r.stderr);
    assert_ne!(env.state(&id), "stopping");
    env.ok(&["terminate-instances", "--instance-ids", &id]);
}

#[test]
fn the_sweep_removes_states_whose_instance_is_gone() {
    let env = Env::new();
    let gone = "i-0123456789abcdef0";
    let (state, tmp) = {
        let paths = amirun::paths::Paths::new(env.home(), env.path("runtime"));
        (
            paths.hibernation_state(gone),
            paths.hibernation_state_tmp(gone),
        )
    };
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    std::fs::write(&state, b"saved").unwrap();
    std::fs::write(&tmp, b"half").unwrap();
    env.ok(&["describe-instances"]);
    assert!(
        !state.exists() && !tmp.exists(),
        "orphaned hibernation states were kept"
    );
}

/// User data: says whether the guest's virtio_balloon driver is bound to
/// a device (the balloon QEMU gives every guest for free-page reporting).
const BALLOON_CHECK: &str = "#!/bin/sh\n\
if ls /sys/bus/virtio/drivers/virtio_balloon/ | grep -q '^virtio'; then echo balloon-driver-bound; else echo balloon-driver-missing; fi\n";

/// The pid of instance `id`'s QEMU (its argv names the guest).
fn qemu_pid(id: &str) -> Option<u32> {
    let needle = format!("guest={id}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let argv = std::fs::read(e.path().join("cmdline")).ok()?;
        let argv = String::from_utf8_lossy(&argv);
        let mut args = argv.split('\0');
        let prog = args.next()?;
        (prog.contains("qemu-system") && args.any(|a| a == needle)).then_some(pid)
    })
}

/// Resident KiB of the guest's RAM in QEMU `pid`: the anonymous mapping
/// exactly `memory_mib` large in its smaps.
fn guest_ram_rss_kib(pid: u32, memory_mib: u64) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut anonymous = false;
    let mut size = 0;
    for line in smaps.lines() {
        let mut w = line.split_whitespace();
        let first = w.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: `start-end perms offset dev inode [name]`.
            anonymous = line.split_whitespace().nth(5).is_none();
            size = 0;
        } else if first == "Size:" {
            size = w.next()?.parse().ok()?;
        } else if first == "Rss:" && anonymous && size == memory_mib * 1024 {
            return w.next()?.parse().ok();
        }
    }
    None
}

/// The memory a guest freed goes back to the host: QEMU has the
/// free-page-reporting balloon, the guest's driver binds to it, and the
/// guest's RAM in QEMU shrinks well below what booting touched (166 MB of
/// a t3.nano's 512 MiB without it); a hibernated guest resumes with the
/// device and stays as small.
#[test]
fn a_tiny_guest_gives_back_the_memory_it_freed_also_after_resume() {
    /// Generous: without reporting this guest's RAM holds 166-178 MB.
    const BOUND_KIB: u64 = 120 * 1024;
    let env = Env::with_images();
    let script = env.path("balloon.sh");
    std::fs::write(&script, BALLOON_CHECK).unwrap();
    let id = env.run_instances(&[
        "--image-id",
        &env.ami(X86),
        "--instance-type",
        "t3.nano",
        "--hibernation-options",
        "Configured=true",
        "--user-data",
        &format!("file://{}", script.display()),
    ])[0]
        .clone();
    let console = env.wait_console(&id, "amirun-tiny: ready", 300);
    assert!(
        console.contains("balloon-driver-bound"),
        "the guest's virtio_balloon driver found no device:\n{console}"
    );
    // Reports follow frees by about 2 s: poll, and say the last reading.
    let small = |when: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let rss = qemu_pid(&id).and_then(|pid| guest_ram_rss_kib(pid, 512));
            match rss {
                Some(kib) if kib < BOUND_KIB => return kib,
                _ => assert!(
                    Instant::now() < deadline,
                    "guest RAM resident {when}: {rss:?} KiB, not under {BOUND_KIB}"
                ),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    eprintln!("guest RAM resident at boot: {} KiB", small("after boot"));

    hibernate(&env, &id);
    env.ok(&["start-instances", "--instance-ids", &id]);
    poll("running after resume", 120, || {
        (env.state(&id) == "running").then_some(())
    });
    eprintln!(
        "guest RAM resident after resume: {} KiB",
        small("after resume")
    );
    env.ok(&["terminate-instances", "--instance-ids", &id]);
}
