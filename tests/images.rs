//! Fetching images into the blob store: files and HTTP, every accepted
//! format, verification, concurrency and interrupted transfers.

mod util;

use amirun::blobs::{Blob, BlobStore, Expected, ImageError, Progress, Source};
use amirun::disk;
use amirun::error_code::ErrorCode;
use std::path::Path;
use std::process::{Command, Stdio};
use url::Url;
use util::{Mode, Served, Server, TestHome};

const MIB: usize = 1024 * 1024;

fn file_source(path: &Path, expected: Expected, format: Option<&str>) -> Source {
    Source {
        url: Url::from_file_path(path).unwrap(),
        expected,
        format: format.map(str::to_owned),
    }
}

/// A blob is a finished qcow2 file named by its own sha256, holding `guest`.
fn assert_blob(home: &TestHome, blob: &Blob, guest: &[u8]) {
    let paths = home.paths();
    assert_eq!(blob.path, paths.blob(&blob.sha256));
    let stored = std::fs::read(&blob.path).unwrap();
    assert_eq!(util::sha256_hex(&stored), blob.sha256);
    assert_eq!(blob.size, stored.len() as u64);
    let info = disk::info(&blob.path).unwrap();
    assert_eq!(info.format, "qcow2");
    assert_eq!(info.backing_file, None);
    assert_eq!(blob.virtual_size, info.virtual_size);
    assert_eq!(
        &util::guest_bytes(&blob.path, "qcow2")[..guest.len()],
        guest
    );
    assert_no_leftovers(home);
}

fn assert_no_leftovers(home: &TestHome) {
    let tmp = home.paths().blob_tmp_dir();
    assert_eq!(
        TestHome::files_in(&tmp),
        Vec::<String>::new(),
        "files left in {tmp:?}"
    );
}

fn assert_no_blobs(home: &TestHome) {
    let dir = home.paths().blob_dir();
    assert_eq!(
        TestHome::files_in(&dir),
        Vec::<String>::new(),
        "blobs in {dir:?}"
    );
}

#[test]
fn raw_file_becomes_a_qcow2_blob() {
    let home = TestHome::new();
    let src = tempfile::tempdir().unwrap();
    let raw = util::raw_image(src.path(), "disk.raw", 2 * MIB, 1);
    let bytes = std::fs::read(&raw).unwrap();
    let store = BlobStore::new(home.paths());

    let source = file_source(&raw, Expected::Sha256(util::sha256_hex(&bytes)), None);
    let blob = store.fetch(&source, Progress::Hidden).unwrap();
    assert_eq!(blob.source_format, "raw");
    assert_eq!(blob.virtual_size, 2 * MIB as u64);
    assert_ne!(
        blob.sha256,
        util::sha256_hex(&bytes),
        "named after the qcow2, not the raw"
    );
    assert_blob(&home, &blob, &bytes);

    // Looked up by digest, and fetched again without copying.
    assert_eq!(store.get(&blob.sha256), Some(blob.clone()));
    assert_eq!(store.fetch(&source, Progress::Hidden).unwrap(), blob);
}

#[test]
fn vmdk_file_becomes_a_qcow2_blob() {
    let home = TestHome::new();
    let src = tempfile::tempdir().unwrap();
    let raw = util::raw_image(src.path(), "disk.raw", 2 * MIB, 2);
    let vmdk = src.path().join("disk.vmdk");
    util::qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        raw.to_str().unwrap(),
        vmdk.to_str().unwrap(),
    ]);
    let store = BlobStore::new(home.paths());
    let blob = store
        .fetch(
            &file_source(&vmdk, Expected::Unverified, Some("vmdk")),
            Progress::Hidden,
        )
        .unwrap();
    assert_eq!(blob.source_format, "vmdk");
    assert_blob(&home, &blob, &std::fs::read(&raw).unwrap());
}

#[test]
fn vhd_fixed_and_dynamic_and_vhdx_become_qcow2_blobs() {
    let src = tempfile::tempdir().unwrap();
    let raw = util::raw_image(src.path(), "disk.raw", MIB, 3);
    let guest = std::fs::read(&raw).unwrap();
    for (name, fmt, options, declared) in [
        ("fixed.vhd", "vpc", "subformat=fixed", Some("vhd")),
        // Undeclared: the footer gives a fixed VHD away.
        ("fixed2.vhd", "vpc", "subformat=fixed", None),
        ("dynamic.vhd", "vpc", "subformat=dynamic", None),
        ("disk.vhdx", "vhdx", "subformat=dynamic", Some("vhdx")),
    ] {
        let home = TestHome::new();
        let image = src.path().join(name);
        util::qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            fmt,
            "-o",
            options,
            raw.to_str().unwrap(),
            image.to_str().unwrap(),
        ]);
        let blob = BlobStore::new(home.paths())
            .fetch(
                &file_source(&image, Expected::Unverified, declared),
                Progress::Hidden,
            )
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(blob.source_format, fmt, "{name}");
        assert_blob(&home, &blob, &guest);
    }
}

#[test]
fn qcow2_is_stored_as_is_and_sha512_checksum_files_work() {
    let home = TestHome::new();
    let src = tempfile::tempdir().unwrap();
    let raw = util::raw_image(src.path(), "disk.raw", MIB, 4);
    let qcow = src.path().join("disk.qcow2");
    util::qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&qcow).unwrap();
    let sha512 = {
        use sha2::Digest;
        hex::encode(sha2::Sha512::digest(&bytes))
    };
    let sums = src.path().join("SHA512SUMS");
    std::fs::write(&sums, format!("{sha512}  disk.qcow2\n")).unwrap();
    let source = file_source(
        &qcow,
        Expected::ChecksumFile(Url::from_file_path(&sums).unwrap()),
        Some("qcow2"),
    );
    let blob = BlobStore::new(home.paths())
        .fetch(&source, Progress::Hidden)
        .unwrap();
    assert_eq!(blob.sha256, util::sha256_hex(&bytes));
    assert_eq!(std::fs::read(&blob.path).unwrap(), bytes);
    assert_blob(&home, &blob, &std::fs::read(&raw).unwrap());

    // A corrupted checksum file entry is a mismatch naming sha512.
    let home2 = TestHome::new();
    std::fs::write(&sums, format!("{}  disk.qcow2\n", "0".repeat(128))).unwrap();
    let err = BlobStore::new(home2.paths())
        .fetch(&source, Progress::Hidden)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::ChecksumMismatch {
                algorithm: "sha512",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn http_source_verified_by_checksum_file() {
    let home = TestHome::new();
    let server = Server::start();
    let bytes = util::pattern(3 * MIB, 5);
    let sums = format!(
        "{}  other.img\n{}  disk.raw\n",
        "1".repeat(64),
        util::sha256_hex(&bytes)
    );
    server.serve("/images/disk.raw", bytes.clone());
    server.serve("/images/SHA256SUMS", sums.into_bytes());
    let source = Source {
        url: server.url("/images/disk.raw"),
        expected: Expected::ChecksumFile(server.url("/images/SHA256SUMS")),
        format: Some("raw".into()),
    };
    let store = BlobStore::new(home.paths());
    // Auto: a bar on a terminal, silent here (stderr is not one under cargo test).
    let blob = store.fetch(&source, Progress::Auto).unwrap();
    assert_eq!(blob.source_format, "raw");
    assert_blob(&home, &blob, &bytes);

    // The second fetch reads the checksum file again, not the image.
    assert_eq!(store.fetch(&source, Progress::Hidden).unwrap(), blob);
    assert_eq!(server.gets("/images/disk.raw"), 1);
    assert_eq!(server.gets("/images/SHA256SUMS"), 2);
}

#[test]
fn wrong_inline_sha256_keeps_nothing() {
    let home = TestHome::new();
    let server = Server::start();
    let bytes = util::pattern(MIB, 6);
    server.serve("/disk.raw", bytes.clone());
    let wrong = "0123456789abcdef".repeat(4);
    let source = Source {
        url: server.url("/disk.raw"),
        expected: Expected::Sha256(wrong.clone()),
        format: None,
    };
    let err = BlobStore::new(home.paths())
        .fetch(&source, Progress::Hidden)
        .unwrap_err();
    assert!(
        matches!(err, ImageError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::InvalidParameterValue);
    let message = err.to_string();
    assert!(message.contains(&wrong), "{message}");
    assert!(message.contains(&util::sha256_hex(&bytes)), "{message}");
    assert!(message.contains(source.url.as_str()), "{message}");
    assert_no_blobs(&home);
    assert_no_leftovers(&home);
}

#[test]
fn two_threads_download_once() {
    let home = TestHome::new();
    let server = Server::start();
    let bytes = util::pattern(2 * MIB, 7);
    server.serve(
        "/SHA256SUMS",
        format!("{}  disk.raw\n", util::sha256_hex(&bytes)).into_bytes(),
    );
    // The image is held back until both fetchers have read the checksum
    // file, so the second one is past that point while the first downloads.
    server.route(
        "/disk.raw",
        Served {
            body: bytes.clone(),
            mode: Mode::Full,
            gate: Some(("/SHA256SUMS".into(), 2)),
        },
    );
    let source = Source {
        url: server.url("/disk.raw"),
        expected: Expected::ChecksumFile(server.url("/SHA256SUMS")),
        format: None,
    };
    let blobs: Vec<Blob> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let store = BlobStore::new(home.paths());
                let source = source.clone();
                s.spawn(move || store.fetch(&source, Progress::Hidden).unwrap())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(blobs[0], blobs[1]);
    assert_eq!(server.gets("/disk.raw"), 1);
    assert_eq!(server.gets("/SHA256SUMS"), 2);
    assert_blob(&home, &blobs[0], &bytes);
}

/// Environment of [`child_fetch`].
const CHILD_HOME: &str = "AMIRUN_TEST_CHILD_HOME";
const CHILD_URL: &str = "AMIRUN_TEST_CHILD_URL";
const CHILD_SUMS: &str = "AMIRUN_TEST_CHILD_SUMS";

/// Not a test of its own: other tests run this test binary again with
/// `--ignored --exact child_fetch` to fetch from a second process.
#[test]
#[ignore = "run in a child process by other tests"]
fn child_fetch() {
    let (Ok(home), Ok(url), Ok(sums)) = (
        std::env::var(CHILD_HOME),
        std::env::var(CHILD_URL),
        std::env::var(CHILD_SUMS),
    ) else {
        eprintln!("child_fetch only runs as a child of other tests");
        return;
    };
    let store = BlobStore::new(amirun::paths::Paths::new(&home, format!("{home}/run")));
    let source = Source {
        url: Url::parse(&url).unwrap(),
        expected: Expected::ChecksumFile(Url::parse(&sums).unwrap()),
        format: None,
    };
    let blob = store.fetch(&source, Progress::Hidden).unwrap();
    // On a line of its own: libtest prints "test child_fetch ... " first.
    println!("\nBLOB {}", blob.sha256);
}

fn spawn_child(home: &TestHome, url: &Url, sums: &Url) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_fetch",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_HOME, home.dir.path())
        .env(CHILD_URL, url.as_str())
        .env(CHILD_SUMS, sums.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn child_blob(child: std::process::Child) -> String {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("BLOB "))
        .unwrap_or_else(|| panic!("no BLOB line in {stdout}"))
        .to_owned()
}

#[test]
fn two_processes_download_once() {
    let home = TestHome::new();
    let server = Server::start();
    let bytes = util::pattern(2 * MIB, 8);
    server.serve(
        "/SHA256SUMS",
        format!("{}  disk.raw\n", util::sha256_hex(&bytes)).into_bytes(),
    );
    server.route(
        "/disk.raw",
        Served {
            body: bytes.clone(),
            mode: Mode::Full,
            gate: Some(("/SHA256SUMS".into(), 2)),
        },
    );
    let (url, sums) = (server.url("/disk.raw"), server.url("/SHA256SUMS"));
    let a = spawn_child(&home, &url, &sums);
    let b = spawn_child(&home, &url, &sums);
    let (a, b) = (child_blob(a), child_blob(b));
    assert_eq!(a, b);
    assert_eq!(server.gets("/disk.raw"), 1);
    let blob = BlobStore::new(home.paths()).get(&a).expect("blob stored");
    assert_blob(&home, &blob, &bytes);
}

#[test]
fn interrupted_download_leaves_no_blob() {
    let home = TestHome::new();
    let server = Server::start();
    let bytes = util::pattern(2 * MIB, 9);
    server.route(
        "/disk.raw",
        Served {
            body: bytes.clone(),
            mode: Mode::CloseAfter(MIB),
            gate: None,
        },
    );
    let source = Source {
        url: server.url("/disk.raw"),
        expected: Expected::Sha256(util::sha256_hex(&bytes)),
        format: None,
    };
    let store = BlobStore::new(home.paths());
    let err = store.fetch(&source, Progress::Hidden).unwrap_err();
    assert!(matches!(err, ImageError::Interrupted { .. }), "{err:?}");
    assert!(err.to_string().contains(source.url.as_str()), "{err}");
    assert_no_blobs(&home);
    assert_no_leftovers(&home);

    // Once the server behaves, the same fetch succeeds.
    server.serve("/disk.raw", bytes.clone());
    let blob = store.fetch(&source, Progress::Hidden).unwrap();
    assert_blob(&home, &blob, &bytes);
}

#[test]
fn killed_fetch_leaves_only_a_temp_file_that_the_next_fetch_removes() {
    let home = TestHome::new();
    let server = Server::start();
    let bytes = util::pattern(2 * MIB, 10);
    server.serve(
        "/SHA256SUMS",
        format!("{}  disk.raw\n", util::sha256_hex(&bytes)).into_bytes(),
    );
    server.route(
        "/disk.raw",
        Served {
            body: bytes.clone(),
            mode: Mode::StallAfter(MIB),
            gate: None,
        },
    );
    let (url, sums) = (server.url("/disk.raw"), server.url("/SHA256SUMS"));
    let mut child = spawn_child(&home, &url, &sums);
    server.wait_stalled(1);
    // The child is mid-download: kill -9.
    child.kill().unwrap();
    child.wait().unwrap();
    server.release();

    let tmp = home.paths().blob_tmp_dir();
    assert_eq!(TestHome::files_in(&tmp).len(), 1, "the child's temp file");
    assert_no_blobs(&home);

    server.serve("/disk.raw", bytes.clone());
    let source = Source {
        url,
        expected: Expected::ChecksumFile(sums),
        format: None,
    };
    let blob = BlobStore::new(home.paths())
        .fetch(&source, Progress::Hidden)
        .unwrap();
    assert_blob(&home, &blob, &bytes);
}

#[test]
fn bad_sources_are_refused_with_clear_errors() {
    let home = TestHome::new();
    let store = BlobStore::new(home.paths());
    let src = tempfile::tempdir().unwrap();
    let raw = util::raw_image(src.path(), "disk.raw", MIB, 11);

    let ftp = Source {
        url: Url::parse("ftp://example.invalid/disk.raw").unwrap(),
        expected: Expected::Unverified,
        format: None,
    };
    let err = store.fetch(&ftp, Progress::Hidden).unwrap_err();
    assert!(matches!(err, ImageError::UnsupportedUrl { .. }), "{err:?}");
    assert!(
        err.to_string().contains("ftp://example.invalid/disk.raw"),
        "{err}"
    );
    assert_eq!(err.code(), ErrorCode::InvalidParameterValue);

    let missing = src.path().join("missing.raw");
    let err = store
        .fetch(
            &file_source(&missing, Expected::Unverified, None),
            Progress::Hidden,
        )
        .unwrap_err();
    assert!(matches!(err, ImageError::Unreadable { .. }), "{err:?}");
    assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");

    let err = store
        .fetch(
            &file_source(&raw, Expected::Unverified, Some("qcow2")),
            Progress::Hidden,
        )
        .unwrap_err();
    assert!(
        matches!(&err, ImageError::FormatMismatch { declared, detected, .. }
            if declared == "qcow2" && detected == "raw"),
        "{err:?}"
    );

    let err = store
        .fetch(
            &file_source(&raw, Expected::Sha256("abc".into()), None),
            Progress::Hidden,
        )
        .unwrap_err();
    assert!(matches!(err, ImageError::InvalidDigest { .. }), "{err:?}");

    let sums = src.path().join("SHA256SUMS");
    std::fs::write(
        &sums,
        format!("{}  a.img\n{}  b.img\n", "1".repeat(64), "2".repeat(64)),
    )
    .unwrap();
    let err = store
        .fetch(
            &file_source(
                &raw,
                Expected::ChecksumFile(Url::from_file_path(&sums).unwrap()),
                None,
            ),
            Progress::Hidden,
        )
        .unwrap_err();
    assert!(matches!(err, ImageError::NoChecksumEntry { .. }), "{err:?}");
    assert!(err.to_string().contains("disk.raw"), "{err}");

    let server = Server::start();
    let err = store
        .fetch(
            &Source {
                url: server.url("/nothing.raw"),
                expected: Expected::Unverified,
                format: None,
            },
            Progress::Hidden,
        )
        .unwrap_err();
    assert!(
        matches!(err, ImageError::HttpStatus { status: 404, .. }),
        "{err:?}"
    );

    // An image that would read another host file through a backing file.
    let overlay = src.path().join("overlay.qcow2");
    disk::create_overlay(&raw, "raw", &overlay, None).unwrap();
    let err = store
        .fetch(
            &file_source(&overlay, Expected::Unverified, None),
            Progress::Hidden,
        )
        .unwrap_err();
    assert!(
        matches!(err, ImageError::NotSelfContained { .. }),
        "{err:?}"
    );

    assert_no_blobs(&home);
    assert_no_leftovers(&home);
}
