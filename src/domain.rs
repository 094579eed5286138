//! The closed sets of EC2's model as types, so a state or a kind is parsed
//! once at the edge and compared as a value everywhere else.
//!
//! Each enum spells its values exactly as EC2 does; `Display`, `FromStr`
//! and serde all use that spelling, and the store keeps the same strings in
//! its TEXT columns (so no migration was needed when these replaced
//! strings).
//!
//! # The instance state machine
//!
//! ```text
//!              start/launch         stop                             start
//!   pending(0) -----------> running(16) ---> stopping(64) ---> stopped(80) ---> pending(0)
//!
//!   pending | running | stopping --- terminate ---> shutting-down(32) ---> terminated(48)
//!   stopped ------------------------ terminate ----------------------------> terminated(48)
//!
//!   pending | running ---- the guest ended (reconcile) ----> stopped(80) | terminated(48)
//! ```
//!
//! [`InstanceStateName::can_become`] is that diagram as a table. The state a
//! user sees is the recorded one reconciled with live facts (supervisor and
//! QEMU alive, the supervisor's exit record): [`reconcile`] decides the
//! transition as a pure function, and the service applies it.

use crate::instance::supervisor::ExitReason;
pub use crate::machine::{Accel, BootMode};
use std::fmt;
use std::str::FromStr;

/// A value outside one of the closed sets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid {what} '{value}': expected one of {}", expected.join(", "))]
pub struct ParseError {
    /// What was being parsed (`architecture`, `instance state`, …).
    pub what: &'static str,
    /// The value given.
    pub value: String,
    /// The accepted values.
    pub expected: &'static [&'static str],
}

/// Serde through `Display`/`FromStr`, so JSON shows EC2's spelling.
macro_rules! serde_as_str {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse::<$ty>().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// An enum whose variants each have one EC2 spelling.
macro_rules! ec2_enum {
    ($(#[$m:meta])* $name:ident, $what:literal, { $($(#[$vm:meta])* $var:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $var),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];

            /// EC2's spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                match s {
                    $($s => Ok($name::$var),)+
                    _ => Err(ParseError {
                        what: $what,
                        value: s.to_string(),
                        expected: &[$($s),+],
                    }),
                }
            }
        }

        serde_as_str!($name);
    };
}

ec2_enum!(
    /// An instance's state (EC2's `InstanceStateName`).
    InstanceStateName, "instance state", {
        /// Launching or starting; code 0.
        Pending = "pending",
        /// The guest runs; code 16.
        Running = "running",
        /// Terminating; code 32.
        ShuttingDown = "shutting-down",
        /// Gone (shown for an hour); code 48.
        Terminated = "terminated",
        /// Stopping; code 64.
        Stopping = "stopping",
        /// Stopped with its EBS volumes kept; code 80.
        Stopped = "stopped",
    }
);

impl InstanceStateName {
    /// EC2's numeric code (`InstanceState.Code`).
    pub fn code(self) -> u16 {
        match self {
            Self::Pending => 0,
            Self::Running => 16,
            Self::ShuttingDown => 32,
            Self::Terminated => 48,
            Self::Stopping => 64,
            Self::Stopped => 80,
        }
    }

    /// The states this one may become: the state machine in the module doc.
    /// A `pending` instance may also settle directly to `stopped` or
    /// `terminated` (an interrupted start or launch), a running guest that
    /// powers itself off goes straight to `stopped` or `terminated`, and an
    /// instance whose supervisor is already gone terminates without passing
    /// through `shutting-down` (`Service::terminate_now`).
    pub fn successors(self) -> &'static [InstanceStateName] {
        use InstanceStateName::*;
        match self {
            Pending => &[Running, Stopping, ShuttingDown, Stopped, Terminated],
            Running => &[Stopping, ShuttingDown, Stopped, Terminated],
            Stopping => &[Stopped, ShuttingDown, Terminated],
            Stopped => &[Pending, Terminated],
            ShuttingDown => &[Terminated],
            Terminated => &[],
        }
    }

    /// Whether `next` follows this state in the state machine.
    pub fn can_become(self, next: InstanceStateName) -> bool {
        self.successors().contains(&next)
    }

    /// `shutting-down` or `terminated`: the instance is going or gone.
    pub fn is_terminating(self) -> bool {
        matches!(self, Self::ShuttingDown | Self::Terminated)
    }

    /// `pending` or `running`: a guest is (about to be) up.
    pub fn is_up(self) -> bool {
        matches!(self, Self::Pending | Self::Running)
    }
}

ec2_enum!(
    /// Where an AMI's or instance's root device lives.
    RootDeviceType, "root device type", {
        /// An EBS volume (survives stop).
        Ebs = "ebs",
        /// An instance-store disk (gone at stop or terminate).
        InstanceStore = "instance-store",
    }
);

ec2_enum!(
    /// What a shutdown from inside the guest does
    /// (`InstanceInitiatedShutdownBehavior`).
    ShutdownBehavior, "shutdown behavior", {
        /// Stop the instance.
        Stop = "stop",
        /// Terminate the instance.
        Terminate = "terminate",
    }
);

ec2_enum!(
    /// An EBS volume's state.
    VolumeStateName, "volume state", {
        /// Being made.
        Creating = "creating",
        /// Not attached.
        Available = "available",
        /// Attached to an instance.
        InUse = "in-use",
        /// Being removed.
        Deleting = "deleting",
        /// Removed.
        Deleted = "deleted",
        /// Failed.
        Error = "error",
    }
);

ec2_enum!(
    /// An AMI's state.
    ImageStateName, "image state", {
        /// Being made (create-image in progress).
        Pending = "pending",
        /// Usable.
        Available = "available",
        /// Not usable.
        Invalid = "invalid",
        /// Deregistered.
        Deregistered = "deregistered",
        /// In transition.
        Transient = "transient",
        /// Making it failed.
        Failed = "failed",
        /// An error occurred.
        Error = "error",
        /// Disabled.
        Disabled = "disabled",
    }
);

ec2_enum!(
    /// An EBS snapshot's state. `deleting` is amirun's own: a delete whose
    /// layer merge is in progress (recovery finishes it).
    SnapshotStateName, "snapshot state", {
        /// Being taken.
        Pending = "pending",
        /// Usable.
        Completed = "completed",
        /// Failed.
        Error = "error",
        /// Recoverable (EC2's archive tier).
        Recoverable = "recoverable",
        /// Being recovered.
        Recovering = "recovering",
        /// Being deleted (amirun: layer merge in progress).
        Deleting = "deleting",
    }
);

ec2_enum!(
    /// An AMI's or instance's architecture, as EC2 names it. `i386` runs on
    /// the x86_64 emulator ([`Architecture::machine`]).
    Architecture, "architecture", {
        /// 64-bit x86.
        X86_64 = "x86_64",
        /// 64-bit ARM (Graviton-like).
        Arm64 = "arm64",
        /// 32-bit x86.
        I386 = "i386",
    }
);

/// EC2's default (RegisterImage without Architecture).
impl Default for Architecture {
    fn default() -> Self {
        Architecture::X86_64
    }
}

impl Architecture {
    /// The QEMU machine architecture that runs it.
    pub fn machine(self) -> crate::machine::Arch {
        match self {
            Self::I386 | Self::X86_64 => crate::machine::Arch::X86_64,
            Self::Arm64 => crate::machine::Arch::Arm64,
        }
    }
}

impl BootMode {
    /// Every value.
    pub const ALL: &'static [BootMode] = &[
        BootMode::Uefi,
        BootMode::LegacyBios,
        BootMode::UefiPreferred,
    ];

    /// EC2's spelling.
    pub fn as_str(self) -> &'static str {
        self.ec2_name()
    }
}

impl fmt::Display for BootMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ec2_name())
    }
}

serde_as_str!(BootMode);

impl Accel {
    /// Every value.
    pub const ALL: &'static [Accel] = &[Accel::Kvm, Accel::Tcg];

    /// The stored spelling (QEMU's name).
    pub fn as_str(self) -> &'static str {
        self.qemu_name()
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.qemu_name())
    }
}

impl FromStr for Accel {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(ParseError {
                what: "accelerator",
                value: s.to_string(),
                expected: &["kvm", "tcg"],
            }),
        }
    }
}

serde_as_str!(Accel);

/// A 12-digit AWS account id, checked once where it enters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(String);

impl AccountId {
    /// Whether `s` is 12 ASCII digits (the one place this is checked).
    pub fn is_valid(s: &str) -> bool {
        s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AccountId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        if Self::is_valid(s) {
            Ok(AccountId(s.to_string()))
        } else {
            Err(ParseError {
                what: "account id",
                value: s.to_string(),
                expected: &["12 digits"],
            })
        }
    }
}

impl serde::Serialize for AccountId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl std::ops::Deref for AccountId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<AccountId> for String {
    fn eq(&self, other: &AccountId) -> bool {
        *self == other.0
    }
}

impl PartialEq<str> for AccountId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<String> for AccountId {
    fn eq(&self, other: &String) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A blob member of a request (`UserData`, `PublicKeyMaterial`): base64
/// on the wire, the decoded bytes here. Deserializing decodes, so bad
/// base64 is refused where the request enters ("Invalid BASE64 encoding",
/// EC2's `InvalidParameterValue` naming the member); serializing encodes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Base64Blob(pub Vec<u8>);

impl Base64Blob {
    /// The decoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes as base64 text.
    pub fn encode(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&self.0)
    }

    /// Decode base64 text (surrounding white space is ignored).
    pub fn decode(text: &str) -> Result<Self, base64::DecodeError> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map(Base64Blob)
    }
}

impl From<Vec<u8>> for Base64Blob {
    fn from(bytes: Vec<u8>) -> Self {
        Base64Blob(bytes)
    }
}

impl serde::Serialize for Base64Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.encode())
    }
}

impl<'de> serde::Deserialize<'de> for Base64Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Base64Blob::decode(&text)
            .map_err(|e| serde::de::Error::custom(format!("Invalid BASE64 encoding ({e})")))
    }
}

/// What amirun recorded about an instance that reconciliation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The recorded state.
    pub state: InstanceStateName,
    /// Instance-store instances terminate where EBS ones stop.
    pub root_device_type: RootDeviceType,
    /// What a guest-initiated shutdown does.
    pub shutdown_behavior: ShutdownBehavior,
}

/// Live facts about an instance's supervisor and guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LiveFacts {
    /// A supervisor process named in the pid file is alive. When false, the
    /// facts were gathered under the fence (the pid file's lock), so the
    /// supervisor is really gone.
    pub supervisor_alive: bool,
    /// QEMU is alive.
    pub qemu_alive: bool,
    /// The reason in the supervisor's `exited` record, if it wrote one.
    pub last_exit: Option<ExitReason>,
    /// The current supervisor reported the guest running (`guest-running`
    /// since its `supervisor-started`).
    pub guest_running: bool,
    /// A supervisor started since the record was last written.
    pub started_since: bool,
    /// A supervisor ever started for this instance.
    pub ever_started: bool,
}

/// What reconciliation does to the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Leave the record as it is.
    Keep,
    /// `pending` -> `running`: the guest booted.
    Running,
    /// The guest is gone: settle to `to` with `reason` (EC2's
    /// `Code: message` StateReason). `withdraw_launch`: a supervisor never
    /// started for this launch; withdraw its launch spec first so one still
    /// on its way never starts QEMU.
    Settle {
        /// `stopped` or `terminated`.
        to: InstanceStateName,
        /// The StateReason.
        reason: String,
        /// Withdraw the launch spec before settling.
        withdraw_launch: bool,
    },
}

const USER_SHUTDOWN: &str = "Client.UserInitiatedShutdown: User initiated shutdown";
const GUEST_SHUTDOWN: &str = "Client.InstanceInitiatedShutdown: Instance initiated shutdown";
/// The StateReason of an instance stopped by hibernation.
pub const USER_HIBERNATE: &str = "Client.UserInitiatedHibernate: User initiated hibernate";

/// Decide what the live facts mean for the recorded state. Pure: every
/// probe, fence and write happens in the caller.
pub fn reconcile(recorded: &Recorded, live: &LiveFacts) -> Transition {
    use InstanceStateName::*;
    let settle = |to, reason: &str, withdraw_launch| Transition::Settle {
        to,
        reason: reason.to_string(),
        withdraw_launch,
    };
    if matches!(recorded.state, Stopped | Terminated) {
        return Transition::Keep;
    }
    let store_backed = recorded.root_device_type == RootDeviceType::InstanceStore;
    // Where a guest that ended without being asked to terminate goes.
    let ended = if store_backed { Terminated } else { Stopped };
    if live.supervisor_alive {
        let booted = recorded.state == Pending
            && (live.qemu_alive || live.last_exit.is_none())
            && live.guest_running;
        return if booted {
            Transition::Running
        } else {
            Transition::Keep
        };
    }
    if recorded.state == Pending && !live.started_since {
        return if live.ever_started && !store_backed {
            settle(
                Stopped,
                "Server.InternalError: The start was interrupted before the instance booted; start it again",
                true,
            )
        } else {
            settle(
                Terminated,
                "Server.InternalError: The launch was interrupted before the instance booted; launch it again",
                true,
            )
        };
    }
    match (recorded.state, live.last_exit) {
        (ShuttingDown, _) => settle(Terminated, USER_SHUTDOWN, false),
        // Only an EBS-backed instance is ever asked to hibernate.
        (_, Some(ExitReason::Hibernated)) => settle(Stopped, USER_HIBERNATE, false),
        (Stopping, _) => settle(Stopped, USER_SHUTDOWN, false),
        (_, Some(ExitReason::GuestShutdown)) => {
            let to = if recorded.shutdown_behavior == ShutdownBehavior::Terminate {
                Terminated
            } else {
                ended
            };
            settle(to, GUEST_SHUTDOWN, false)
        }
        (_, Some(ExitReason::StopRequested | ExitReason::Forced)) => {
            settle(ended, USER_SHUTDOWN, false)
        }
        (_, r) => {
            let what = match r {
                Some(ExitReason::QemuKilled) => "QEMU was killed",
                Some(ExitReason::QemuCrashed) => "QEMU crashed",
                Some(ExitReason::StartFailed) => "QEMU failed to start (see supervisor.log)",
                Some(ExitReason::ResumeFailed) => {
                    "the saved hibernation state could not be resumed; start the instance again to boot it"
                }
                _ => "the supervisor died",
            };
            settle(ended, &format!("Server.InternalError: {what}"), false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceStateName::*;

    #[test]
    fn base64_blobs_decode_where_they_enter_and_encode_back() {
        let b: Base64Blob = serde_json::from_value(serde_json::json!(" aGk= \n")).unwrap();
        assert_eq!(b.bytes(), b"hi");
        assert_eq!(serde_json::to_value(&b).unwrap(), serde_json::json!("aGk="));
        let e = serde_json::from_value::<Base64Blob>(serde_json::json!("a%b")).unwrap_err();
        assert!(e.to_string().starts_with("Invalid BASE64 encoding"), "{e}");
    }

    #[test]
    fn spellings_round_trip() {
        fn check<T: FromStr + fmt::Display + serde::Serialize + Copy>(all: &[T])
        where
            T::Err: fmt::Debug,
        {
            for v in all {
                let s = v.to_string();
                assert_eq!(s.parse::<T>().unwrap().to_string(), s);
                assert_eq!(serde_json::to_value(v).unwrap(), serde_json::json!(s));
            }
        }
        check(InstanceStateName::ALL);
        check(RootDeviceType::ALL);
        check(ShutdownBehavior::ALL);
        check(VolumeStateName::ALL);
        check(ImageStateName::ALL);
        check(SnapshotStateName::ALL);
        check(Architecture::ALL);
        check(BootMode::ALL);
        check(Accel::ALL);
        assert_eq!(
            InstanceStateName::ALL
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
            [
                "pending",
                "running",
                "shutting-down",
                "terminated",
                "stopping",
                "stopped"
            ]
        );
        assert!("Running".parse::<InstanceStateName>().is_err());
        assert_eq!(
            "sparc".parse::<Architecture>().unwrap_err().to_string(),
            "Invalid architecture 'sparc': expected one of x86_64, arm64, i386"
        );
    }

    #[test]
    fn codes_and_transitions() {
        let codes: Vec<u16> = InstanceStateName::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes, [0, 16, 32, 48, 64, 80]);
        assert!(Pending.can_become(Running));
        assert!(Running.can_become(Stopping));
        assert!(Stopping.can_become(Stopped));
        assert!(Stopped.can_become(Pending));
        assert!(Running.can_become(ShuttingDown));
        assert!(Stopped.can_become(Terminated));
        assert!(ShuttingDown.can_become(Terminated));
        assert!(!Terminated.can_become(Pending));
        assert!(!Stopped.can_become(Running));
        assert!(!ShuttingDown.can_become(Stopped));
    }

    #[test]
    fn account_ids() {
        assert!("123456789012".parse::<AccountId>().is_ok());
        for bad in ["12345678901", "1234567890123", "12345678901a", ""] {
            assert!(bad.parse::<AccountId>().is_err(), "{bad}");
        }
    }

    /// Every row of the reconciliation table.
    #[test]
    fn reconcile_table() {
        use ExitReason::*;
        use RootDeviceType::*;
        use ShutdownBehavior::*;
        let alive = LiveFacts {
            supervisor_alive: true,
            qemu_alive: true,
            ..LiveFacts::default()
        };
        // Dead supervisor, started for this launch.
        let dead = |exit| LiveFacts {
            last_exit: exit,
            started_since: true,
            ever_started: true,
            ..LiveFacts::default()
        };
        let settle = |to, reason: &str, withdraw_launch| Transition::Settle {
            to,
            reason: reason.to_string(),
            withdraw_launch,
        };
        let interrupted_start = "Server.InternalError: The start was interrupted before the instance booted; start it again";
        let interrupted_launch = "Server.InternalError: The launch was interrupted before the instance booted; launch it again";
        type Row = (
            InstanceStateName,
            RootDeviceType,
            ShutdownBehavior,
            LiveFacts,
            Transition,
        );
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            // Settled states are never changed.
            (Stopped, Ebs, Stop, dead(None), Transition::Keep),
            (Terminated, Ebs, Stop, dead(None), Transition::Keep),
            (Stopped, Ebs, Stop, alive, Transition::Keep),
            // Alive supervisor: pending becomes running once the guest booted.
            (Pending, Ebs, Stop, LiveFacts { guest_running: true, ..alive }, Transition::Running),
            (Pending, Ebs, Stop, alive, Transition::Keep),
            (Pending, Ebs, Stop, LiveFacts { qemu_alive: false, guest_running: true, ..alive }, Transition::Running),
            (Pending, Ebs, Stop, LiveFacts { qemu_alive: false, guest_running: true, last_exit: Some(QemuCrashed), ..alive }, Transition::Keep),
            (Running, Ebs, Stop, LiveFacts { guest_running: true, ..alive }, Transition::Keep),
            (Stopping, Ebs, Stop, alive, Transition::Keep),
            (ShuttingDown, Ebs, Stop, alive, Transition::Keep),
            // Pending whose supervisor never started for this launch or start.
            (Pending, Ebs, Stop, LiveFacts::default(), settle(Terminated, interrupted_launch, true)),
            (Pending, Ebs, Stop, LiveFacts { ever_started: true, ..LiveFacts::default() }, settle(Stopped, interrupted_start, true)),
            (Pending, InstanceStore, Stop, LiveFacts { ever_started: true, ..LiveFacts::default() }, settle(Terminated, interrupted_launch, true)),
            // A stop or terminate in progress completes, whatever the exit.
            (ShuttingDown, Ebs, Stop, dead(Some(Forced)), settle(Terminated, USER_SHUTDOWN, false)),
            (Stopping, Ebs, Stop, dead(Some(QemuCrashed)), settle(Stopped, USER_SHUTDOWN, false)),
            // The guest powered itself off.
            (Running, Ebs, Stop, dead(Some(GuestShutdown)), settle(Stopped, GUEST_SHUTDOWN, false)),
            (Running, Ebs, Terminate, dead(Some(GuestShutdown)), settle(Terminated, GUEST_SHUTDOWN, false)),
            (Running, InstanceStore, Stop, dead(Some(GuestShutdown)), settle(Terminated, GUEST_SHUTDOWN, false)),
            (Pending, Ebs, Stop, dead(Some(GuestShutdown)), settle(Stopped, GUEST_SHUTDOWN, false)),
            // A stop asked for or forced (e.g. SIGTERM to the supervisor).
            (Running, Ebs, Stop, dead(Some(StopRequested)), settle(Stopped, USER_SHUTDOWN, false)),
            (Running, Ebs, Terminate, dead(Some(Forced)), settle(Stopped, USER_SHUTDOWN, false)),
            (Running, InstanceStore, Stop, dead(Some(Forced)), settle(Terminated, USER_SHUTDOWN, false)),
            // The guest died without being asked.
            (Running, Ebs, Stop, dead(Some(QemuKilled)), settle(Stopped, "Server.InternalError: QEMU was killed", false)),
            (Running, Ebs, Stop, dead(Some(QemuCrashed)), settle(Stopped, "Server.InternalError: QEMU crashed", false)),
            (Running, Ebs, Stop, dead(Some(StartFailed)), settle(Stopped, "Server.InternalError: QEMU failed to start (see supervisor.log)", false)),
            (Running, Ebs, Stop, dead(None), settle(Stopped, "Server.InternalError: the supervisor died", false)),
            (Running, InstanceStore, Stop, dead(None), settle(Terminated, "Server.InternalError: the supervisor died", false)),
            // Hibernation: saved, or the resume of a saved state failed.
            (Stopping, Ebs, Stop, dead(Some(Hibernated)), settle(Stopped, USER_HIBERNATE, false)),
            (Running, Ebs, Terminate, dead(Some(Hibernated)), settle(Stopped, USER_HIBERNATE, false)),
            (Pending, Ebs, Stop, dead(Some(ResumeFailed)), settle(Stopped, "Server.InternalError: the saved hibernation state could not be resumed; start the instance again to boot it", false)),
        ];
        for (state, root_device_type, shutdown_behavior, live, want) in rows {
            let recorded = Recorded {
                state,
                root_device_type,
                shutdown_behavior,
            };
            let got = reconcile(&recorded, &live);
            assert_eq!(got, want, "{recorded:?} {live:?}");
            match got {
                Transition::Running => assert!(state.can_become(Running)),
                Transition::Settle { to, .. } => assert!(state.can_become(to), "{state} -> {to}"),
                Transition::Keep => {}
            }
        }
    }
}
