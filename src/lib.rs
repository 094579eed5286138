//! amirun: a local EC2 for AMIs.
//!
//! A catalog of AMIs backed by real qcow2 disk images, booted as QEMU guests
//! with EC2's semantics, and baked into new AMIs by snapshotting disks. One
//! binary; state under one directory; no daemon.
//!
//! Data flows one way: front ends -> service -> domain modules -> host tools.
//!
//! - [`cli`] translates the command line into [`service`] calls and renders
//!   the results as `aws ec2` would (JSON, table, text, `--query`).
//! - [`service`] is the one door into the engine: one method per EC2
//!   operation; it checks permissions and state rules and is the only caller
//!   of the modules below.
//! - [`store`] is the only module that touches the database (SQLite, WAL).
//! - [`catalog`] reads catalog files (`images/catalog.json`, `$AMIRUN_HOME/catalog.d`).
//! - [`images`] fetches and verifies images into the content-addressed blob store.
//! - [`disk`] is the only module that runs `qemu-img`.
//! - [`instance`] runs instances: the per-instance supervisor process that
//!   owns QEMU, and the QMP client it talks to QEMU with.
//! - [`machine`] turns an instance spec into a QEMU argv (machine, CPU,
//!   firmware, devices) and chooses KVM or TCG by probing.
//! - [`http`] serves the EC2 Query API (`amirun serve`): it translates
//!   requests into the same [`service`] calls the CLI makes and renders
//!   EC2's XML.
//! - [`metadata`] makes the NoCloud seed and answers IMDS for each guest.
//! - [`paths`] is the only module that knows file names on disk.
//! - [`ids`] makes and checks EC2-style ids.

pub mod catalog;
pub mod cli;
pub mod disk;
pub mod http;
pub mod ids;
pub mod images;
pub mod instance;
pub mod machine;
pub mod metadata;
pub mod paths;
pub mod service;
pub mod store;
