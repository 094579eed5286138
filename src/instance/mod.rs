//! Running instances.
//!
//! An instance is one QEMU process under one supervisor process. This module
//! will hold the EC2 instance state machine (`pending -> running -> stopping
//! -> stopped`, `shutting-down -> terminated`, see ARCHITECTURE.md); for now it
//! holds the two pieces that machine is built on:
//!
//! - [`qmp`]: a small synchronous client for QEMU's machine protocol, used to
//!   ask QEMU for its status, press the ACPI power button, reset, quit, and
//!   take live disk snapshots.
//! - [`hotplug`]: volumes plugged into and out of a running guest
//!   (AttachVolume, DetachVolume, ModifyVolume), inside the supervisor.
//! - [`live_snapshot`]: the supervisor's pause-switch-resume of disks, so a
//!   dying client never leaves a guest paused.
//! - [`supervisor`]: the detached per-instance process that starts QEMU,
//!   records how it ends in the instance's event log, answers a control
//!   socket, saves and resumes hibernated guests, and the probes the
//!   service uses to derive an instance's state from live facts.

pub mod hotplug;
pub mod live_snapshot;
pub mod qmp;
pub mod supervisor;
