//! What keeps amirun's state private and working on a shared host: files
//! and directories private whatever the umask, a runtime directory that
//! another user cannot plant or own, and catalog files that cannot block
//! instance operations by being broken.

mod util;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use util::*;

const X86: &str = "amirun/tiny-x86_64";

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// `amirun ARGS` run by `sh` under umask 000, with this environment.
fn under_umask_000(env: &[(&str, &Path)], remove: &[&str], args: &[&str]) -> Run {
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg("umask 000; exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_amirun"))
        .args(args)
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    for k in remove {
        c.env_remove(k);
    }
    c.output().unwrap().into()
}

/// Removes the default runtime directories a test made under /dev/shm.
struct RemoveDirs(Vec<PathBuf>);

impl Drop for RemoveDirs {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[test]
fn a_fresh_home_and_default_runtime_dir_are_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("fresh/home");
    let envs = [("AMIRUN_HOME", home.as_path())];
    let unset = ["AMIRUN_RUNTIME_DIR", "XDG_RUNTIME_DIR"];
    let r = under_umask_000(
        &envs,
        &unset,
        &[
            "create-key-pair",
            "--key-name",
            "k",
            "--key-type",
            "ed25519",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("PRIVATE KEY"), "{}", r.stdout);
    assert_eq!(mode(&home), 0o700);
    // The database holds the private key: 0600, and so do SQLite's side files.
    assert_eq!(mode(&home.join("state.db")), 0o600);
    for side in ["state.db-wal", "state.db-shm"] {
        let p = home.join(side);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{side}");
        }
    }
    // The default runtime directory: a random name, ours, 0700, recorded.
    let recorded = std::fs::read_to_string(home.join("runtime-dir")).unwrap();
    let runtime = PathBuf::from(recorded.trim());
    let mut cleanup = RemoveDirs(vec![runtime.clone()]);
    let name = runtime.file_name().unwrap().to_str().unwrap().to_string();
    let prefix = format!("amirun-{}-", euid());
    assert!(name.starts_with(&prefix), "{name}");
    assert_eq!(name.len(), prefix.len() + 16, "{name}");
    let meta = std::fs::metadata(&runtime).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (euid(), 0o700));
    // The next command uses the same one.
    let r = under_umask_000(&envs, &unset, &["describe-key-pairs"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let again = std::fs::read_to_string(home.join("runtime-dir")).unwrap();
    assert_eq!(again, recorded);
    // Gone (as after a reboot): a new random name, never the old one.
    std::fs::remove_dir(&runtime).unwrap();
    let r = under_umask_000(&envs, &unset, &["describe-key-pairs"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let next = PathBuf::from(
        std::fs::read_to_string(home.join("runtime-dir"))
            .unwrap()
            .trim(),
    );
    cleanup.0.push(next.clone());
    assert_ne!(next, runtime);
    assert_eq!(mode(&next), 0o700);
    // A home made earlier with loose permissions is tightened.
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        home.join("state.db"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let r = under_umask_000(&envs, &unset, &["describe-key-pairs"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&home.join("state.db")), 0o600);
}

#[test]
fn a_runtime_dir_others_own_or_can_write_is_refused() {
    let env = Env::new();
    let runtime = env.path("runtime");
    // Ours but readable by others (as `mkdir` makes it): tightened, used.
    std::fs::set_permissions(
        &runtime,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    env.ok(&["describe-key-pairs"]);
    assert_eq!(mode(&runtime), 0o700);
    // Writable by others: someone could have planted files. Refused.
    std::fs::set_permissions(
        &runtime,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let r = env.fails(&["describe-key-pairs"], "UnsafeRuntimeDirectory");
    assert!(r.stderr.contains(runtime.to_str().unwrap()), "{}", r.stderr);
    assert!(r.stderr.contains("0777"), "{}", r.stderr);
    assert!(r.stderr.contains("AMIRUN_RUNTIME_DIR"), "{}", r.stderr);
    assert_eq!(mode(&runtime), 0o777, "a refused directory is left alone");
    // Owned by someone else (root can hand it to nobody): refused, whatever its mode.
    if euid() == 0 {
        std::fs::set_permissions(
            &runtime,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        std::os::unix::fs::chown(&runtime, Some(65534), Some(65534)).unwrap();
        let r = env.fails(&["describe-key-pairs"], "UnsafeRuntimeDirectory");
        assert!(r.stderr.contains("uid 65534"), "{}", r.stderr);
        assert!(r.stderr.contains(runtime.to_str().unwrap()), "{}", r.stderr);
        std::os::unix::fs::chown(&runtime, Some(0), Some(0)).unwrap();
    }
    env.ok(&["describe-key-pairs"]);
}

/// A broken catalog file is named in a warning and its entries skipped;
/// describe, run, stop and terminate of other catalogs' images all work,
/// and the guest's own files (seed with user data, serial log) are private.
#[test]
fn a_broken_catalog_file_never_blocks_instance_operations() {
    let env = Env::with_images();
    let before = env.ok(&["describe-images", "--query", "Images[].ImageId"]);
    let broken = env.home().join("catalog.d/broken.json");
    std::fs::write(&broken, "{\"format_version\": 1, \"images\": [ oops").unwrap();
    let r = env.run(&["describe-images", "--query", "Images[].ImageId"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("warning") && r.stderr.contains(broken.to_str().unwrap()),
        "{}",
        r.stderr
    );
    assert_eq!(r.json(), before, "the other catalogs' AMIs are all there");

    let script = env.path("user-data.sh");
    std::fs::write(&script, "#!/bin/sh\necho secret-user-data-ran\n").unwrap();
    let r = under_umask_000(
        &[
            ("AMIRUN_HOME", env.home().as_path()),
            ("AMIRUN_RUNTIME_DIR", env.path("runtime").as_path()),
        ],
        &["AMIRUN_REGION", "AMIRUN_ACCOUNT", "AMIRUN_OUTPUT"],
        &[
            "run-instances",
            "--image-id",
            &env.ami(X86),
            "--user-data",
            &format!("file://{}", script.display()),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("broken.json"), "{}", r.stderr);
    let id = r.json()["Instances"][0]["InstanceId"]
        .as_str()
        .unwrap()
        .to_string();
    env.wait_console(&id, "secret-user-data-ran", 300);
    let dir = env.home().join("instances").join(&id);
    assert_eq!(mode(&dir.join("serial.log")), 0o600, "serial log");
    assert_eq!(mode(&dir.join("seed.img")), 0o600, "seed");
    assert_eq!(mode(&env.home()), 0o700);
    env.ok(&["stop-instances", "--instance-ids", &id]);
    env.wait("instance-stopped", &id);
    env.ok(&["terminate-instances", "--instance-ids", &id]);
    env.wait("instance-terminated", &id);

    // Fixed: no warning any more.
    std::fs::remove_file(&broken).unwrap();
    let r = env.run(&["describe-images"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
}
