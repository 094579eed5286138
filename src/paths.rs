//! Every file name amirun uses on disk, in one place.
//!
//! No other module builds a path under the state directory by hand: they ask
//! [`Paths`] for it. The layout (also in ARCHITECTURE.md):
//!
//! ```text
//! $AMIRUN_HOME            default $XDG_DATA_HOME/amirun (~/.local/share/amirun)
//!   state.db              the database (state.db.lock serialises opening it); 0600
//!   runtime-dir           the default runtime directory's random name (see below)
//!   catalog.d/*.json      extra catalog files (locally built images land here)
//!   blobs/sha256/<hex>    downloaded or imported base images, immutable
//!   blobs/tmp/            downloads in flight (never mistaken for a blob)
//!   blobs/locks/<key>.lock   one lock file per source being fetched
//!   blobs/sources/<key>.json which blob a source (URL + digest) produced
//!   snapshots/<snap-id>.qcow2
//!   volumes/<vol-id>.qcow2
//!   volumes/<vol-id>.next.qcow2   a volume's next overlay while a snapshot is taken
//!   volumes/<i-id>.hibernation    a hibernated guest's memory and device state
//!   volumes/<i-id>.hibernation.tmp   the same while QEMU writes it (never resumed)
//!   instances/<i-id>/     supervisor.pid qmp.sock serial.log seed.img vars.fd events.jsonl
//!                         launch.json control.sock supervisor.log imds.sock
//!                         network.json resolv.conf (guest network, src/network.rs)
//! $AMIRUN_RUNTIME_DIR     a tmpfs; default $XDG_RUNTIME_DIR/amirun, else
//!                         /dev/shm/amirun-<uid>-<16 random hex digits>
//!   <i-id>/               instance-store root overlay and ephemeral disks
//!   vpc/<vpc-id>/         a VPC's host network: netns (bind mount), lock, members,
//!                         subnets, dnsmasq.pid|log, leases, dhcp-hosts/, leg.pid
//!   accel-probe.json      cached verdict of the KVM probe (per kernel and QEMU)
//! ```
//!
//! Everything is private ([`crate::private_fs`]): `$AMIRUN_HOME` is 0700 and
//! the files holding secrets 0600. The runtime directory sits in a shared
//! place, so it must be ours and writable by nobody else before it is used.
//! `$XDG_RUNTIME_DIR` is already per-user and protected; without it, the
//! default is not a predictable `/dev/shm/amirun-<uid>` (which another user
//! could create first) but a name with a random suffix, made 0700 and
//! recorded in `$AMIRUN_HOME/runtime-dir`; when that directory is gone (a
//! reboot emptied /dev/shm) or no longer ours, a new random one is made.
//! (The first time, an existing `/dev/shm/amirun-<uid>` from an older
//! version is adopted if it is ours and nobody else can write to it.)

use std::path::{Path, PathBuf};

/// The extension of a hibernation state file.
const HIBERNATION_SUFFIX: &str = "hibernation";

/// Resolved locations of amirun's state.
#[derive(Debug, Clone)]
pub struct Paths {
    home: PathBuf,
    runtime: PathBuf,
}

impl Paths {
    /// Locations from the environment (`AMIRUN_HOME`, `AMIRUN_RUNTIME_DIR`,
    /// XDG variables), falling back to the documented defaults.
    pub fn from_env() -> Self {
        let home = std::env::var_os("AMIRUN_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_DATA_HOME").map(|d| PathBuf::from(d).join("amirun")))
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/amirun"))
            })
            .unwrap_or_else(|| PathBuf::from(".amirun"));
        let runtime = std::env::var_os("AMIRUN_RUNTIME_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("amirun"))
            })
            .unwrap_or_else(|| Self::default_runtime(&home));
        Self::new(home, runtime)
    }

    /// The recorded random runtime directory under /dev/shm (or the temp
    /// directory where there is no /dev/shm); see the module doc. When it
    /// cannot be made, `$AMIRUN_HOME/run`, which is private too.
    fn default_runtime(home: &Path) -> PathBuf {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let probe = Self::new(home, PathBuf::new());
        let uid = nix::unistd::geteuid();
        crate::private_fs::recorded_runtime_dir(
            &probe.runtime_pointer(),
            &probe.runtime_pointer_lock(),
            &base,
            &format!("amirun-{uid}-"),
            // Made by older versions; adopted only if it is ours and safe.
            Some(&base.join(format!("amirun-{uid}"))),
        )
        .unwrap_or_else(|_| home.join("run"))
    }

    /// Records the default runtime directory's random name.
    pub fn runtime_pointer(&self) -> PathBuf {
        self.home.join("runtime-dir")
    }

    /// Lock file serialising the choice of the default runtime directory.
    pub fn runtime_pointer_lock(&self) -> PathBuf {
        self.home.join("runtime-dir.lock")
    }

    /// The database and the files SQLite keeps beside it (`-wal`, `-shm`).
    pub fn database_files(&self) -> [PathBuf; 3] {
        [
            self.database(),
            self.home.join("state.db-wal"),
            self.home.join("state.db-shm"),
        ]
    }

    /// Locations rooted at explicit directories (tests use this).
    pub fn new(home: impl Into<PathBuf>, runtime: impl Into<PathBuf>) -> Self {
        Self {
            home: home.into(),
            runtime: runtime.into(),
        }
    }

    /// `$AMIRUN_HOME`.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// `$AMIRUN_RUNTIME_DIR`, on tmpfs.
    pub fn runtime(&self) -> &Path {
        &self.runtime
    }

    /// The SQLite database.
    pub fn database(&self) -> PathBuf {
        self.home.join("state.db")
    }

    /// Lock file that serialises opening (WAL switch, migrations) of the database.
    pub fn database_lock(&self) -> PathBuf {
        self.home.join("state.db.lock")
    }

    /// Directory of extra catalog files picked up automatically.
    pub fn catalog_dir(&self) -> PathBuf {
        self.home.join("catalog.d")
    }

    /// Directory of region bindings (`*.json`): which regions run on
    /// another backend than the local engine ([`crate::backend::RegionBindings`]).
    pub fn regions_dir(&self) -> PathBuf {
        self.home.join("regions.d")
    }

    /// Where an AMI's root disk is flattened before a remote backend takes
    /// it (removed once uploaded).
    pub fn publish_file(&self, image_id: &str, region: &str) -> PathBuf {
        self.home
            .join("publish")
            .join(format!("{image_id}-{region}.qcow2"))
    }

    /// Directory of finished, verified blobs.
    pub fn blob_dir(&self) -> PathBuf {
        self.home.join("blobs/sha256")
    }

    /// A finished blob, named by the sha256 of its content.
    pub fn blob(&self, sha256: &str) -> PathBuf {
        self.blob_dir().join(sha256)
    }

    /// Where downloads in flight are written before they are verified.
    pub fn blob_tmp_dir(&self) -> PathBuf {
        self.home.join("blobs/tmp")
    }

    /// Lock file serialising fetches of one source (keyed by a hash of it).
    pub fn blob_lock(&self, key: &str) -> PathBuf {
        self.blob_lock_dir().join(format!("{key}.lock"))
    }

    /// Directory of the per-source lock files.
    pub fn blob_lock_dir(&self) -> PathBuf {
        self.home.join("blobs/locks")
    }

    /// Directory of the source index: one small JSON file per fetched source.
    pub fn blob_source_dir(&self) -> PathBuf {
        self.home.join("blobs/sources")
    }

    /// Source index entry: which blob the source with this key produced.
    pub fn blob_source(&self, key: &str) -> PathBuf {
        self.blob_source_dir().join(format!("{key}.json"))
    }

    /// Directory of snapshot files.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.home.join("snapshots")
    }

    /// One snapshot's qcow2 layer.
    pub fn snapshot(&self, snapshot_id: &str) -> PathBuf {
        self.snapshot_dir().join(format!("{snapshot_id}.qcow2"))
    }

    /// Temporary name a snapshot file is written under before it is
    /// renamed to [`Paths::snapshot`] (the orphan sweep knows it by its id).
    pub fn snapshot_tmp(&self, snapshot_id: &str) -> PathBuf {
        self.snapshot_dir()
            .join(format!(".{snapshot_id}.qcow2.tmp"))
    }

    /// Directory of EBS volume overlays.
    pub fn volume_dir(&self) -> PathBuf {
        self.home.join("volumes")
    }

    /// One EBS volume's qcow2 overlay.
    pub fn volume(&self, volume_id: &str) -> PathBuf {
        self.volume_dir().join(format!("{volume_id}.qcow2"))
    }

    /// A volume's next overlay while a snapshot is being taken: made here,
    /// switched to (live, over QMP), then renamed to [`Paths::volume`].
    pub fn volume_pending(&self, volume_id: &str) -> PathBuf {
        self.volume_dir().join(format!("{volume_id}.next.qcow2"))
    }

    /// A hibernated instance's saved memory and device state (QEMU's
    /// migration stream), next to its volumes; renamed here from
    /// [`Paths::hibernation_state_tmp`] only once QEMU reported it complete.
    pub fn hibernation_state(&self, instance_id: &str) -> PathBuf {
        self.volume_dir()
            .join(format!("{instance_id}.{HIBERNATION_SUFFIX}"))
    }

    /// Where QEMU writes a hibernation state while it is incomplete.
    pub fn hibernation_state_tmp(&self, instance_id: &str) -> PathBuf {
        self.volume_dir()
            .join(format!("{instance_id}.{HIBERNATION_SUFFIX}.tmp"))
    }

    /// Whether a file name in the volume directory is a hibernation state
    /// (complete or not) and of which instance: `Some((id, complete))`.
    pub fn parse_hibernation_state(name: &str) -> Option<(&str, bool)> {
        let (id, rest) = name.split_once('.')?;
        match rest {
            r if r == HIBERNATION_SUFFIX => Some((id, true)),
            r if r.strip_suffix(".tmp") == Some(HIBERNATION_SUFFIX) => Some((id, false)),
            _ => None,
        }
    }

    /// Directory of per-object operation locks (outlive the objects they guard).
    pub fn lock_dir(&self) -> PathBuf {
        self.home.join("locks")
    }

    /// One object's operation lock (`i-…`, `vol-…`, `snap-…`, `ami-…`): held
    /// by whatever changes or makes the object.
    pub fn object_lock(&self, object_id: &str) -> PathBuf {
        self.lock_dir().join(format!("{object_id}.lock"))
    }

    /// Directory of CreateImage jobs handed to a worker process.
    pub fn image_job_dir(&self) -> PathBuf {
        self.home.join("jobs")
    }

    /// The CreateImage job of a `pending` AMI: what its worker
    /// (`amirun __create-image`) is to do; removed when the AMI is settled.
    pub fn image_job(&self, image_id: &str) -> PathBuf {
        self.image_job_dir().join(format!("{image_id}.json"))
    }

    /// The log (stderr) of a CreateImage job's worker; removed with the job.
    pub fn image_job_log(&self, image_id: &str) -> PathBuf {
        self.image_job_dir().join(format!("{image_id}.log"))
    }

    /// Directory of one instance's persistent files.
    pub fn instance_dir(&self, instance_id: &str) -> PathBuf {
        self.home.join("instances").join(instance_id)
    }

    /// Directory of one instance's instance-store disks (on tmpfs).
    pub fn instance_runtime_dir(&self, instance_id: &str) -> PathBuf {
        self.runtime.join(instance_id)
    }

    /// Instance-store root overlay.
    pub fn instance_store_root(&self, instance_id: &str) -> PathBuf {
        self.instance_runtime_dir(instance_id).join("root.qcow2")
    }

    /// Instance-store `ephemeralN` disk.
    pub fn ephemeral_disk(&self, instance_id: &str, n: u32) -> PathBuf {
        self.instance_runtime_dir(instance_id)
            .join(format!("ephemeral{n}.qcow2"))
    }

    /// Supervisor pid file.
    pub fn supervisor_pid(&self, instance_id: &str) -> PathBuf {
        self.instance_dir(instance_id).join("supervisor.pid")
    }

    /// QEMU's QMP socket.
    pub fn qmp_socket(&self, instance_id: &str) -> PathBuf {
        self.instance_dir(instance_id).join("qmp.sock")
    }

    /// Serial console log.
    pub fn serial_log(&self, instance_id: &str) -> PathBuf {
        self.instance_dir(instance_id).join("serial.log")
    }

    /// NoCloud seed image (a raw FAT image labelled `cidata`, not an ISO).
    pub fn seed_image(&self, instance_id: &str) -> PathBuf {
        self.instance_dir(instance_id).join("seed.img")
    }

    /// Cached verdict of the KVM probe. On tmpfs, so a host reboot (perhaps
    /// into another kernel) probes again.
    pub fn accel_probe_cache(&self) -> PathBuf {
        self.runtime.join("accel-probe.json")
    }

    /// Per-instance UEFI variable store.
    pub fn uefi_vars(&self, instance_id: &str) -> PathBuf {
        self.instance_dir(instance_id).join("vars.fd")
    }

    /// Supervisor's event log (one JSON object a line).
    pub fn events(&self, instance_id: &str) -> PathBuf {
        self.instance_dir(instance_id).join("events.jsonl")
    }

    /// Supervisor's own stderr log.
    pub fn supervisor_log(&self, instance_id: &str) -> PathBuf {
        self.instance_dir(instance_id).join("supervisor.log")
    }

    /// The supervisor's control socket (JSON lines; see `instance::supervisor`).
    pub fn control_socket(&self, instance_id: &str) -> PathBuf {
        self.instance_dir(instance_id).join("control.sock")
    }

    /// The launch spec the service writes for the supervisor to read.
    pub fn launch_spec(&self, instance_id: &str) -> PathBuf {
        self.instance_dir(instance_id).join("launch.json")
    }

    /// The supervisor's instance metadata service socket (HTTP/1.1; the
    /// guest reaches it through `amirun __imds-relay`).
    pub fn imds_socket(&self, instance_id: &str) -> PathBuf {
        self.instance_dir(instance_id).join("imds.sock")
    }

    /// The `resolv.conf` QEMU sees inside the guest's namespace.
    pub fn guest_resolv_conf(&self, instance_id: &str) -> PathBuf {
        self.instance_dir(instance_id).join("resolv.conf")
    }

    /// How the guest's network came up ([`crate::network::NetworkStatus`]).
    pub fn network_status(&self, instance_id: &str) -> PathBuf {
        self.instance_dir(instance_id).join("network.json")
    }

    /// Where the host networks of VPCs live while instances run in them
    /// (`$AMIRUN_RUNTIME_DIR/vpc`), one directory per VPC.
    pub fn vpc_networks_dir(&self) -> PathBuf {
        self.runtime.join("vpc")
    }

    /// The files of one VPC's host network ([`crate::network::vpc`]).
    pub fn vpc_network(&self, vpc_id: &str) -> VpcNetworkFiles {
        VpcNetworkFiles::in_dir(self.vpc_networks_dir().join(vpc_id))
    }
}

/// The files of one VPC's host network, under `$AMIRUN_RUNTIME_DIR/vpc/<vpc-id>/`
/// (tmpfs, so a host reboot clears them with the networks themselves).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VpcNetworkFiles {
    /// The directory.
    pub dir: PathBuf,
    /// `lock`: held while the network is made, joined or taken down.
    pub lock: PathBuf,
    /// `members`: every supervisor of an instance in the VPC holds a shared
    /// lock on it; an exclusive lock that succeeds means nobody is left.
    pub members: PathBuf,
    /// `netns`: the VPC's network namespace, bind-mounted.
    pub netns: PathBuf,
    /// `subnets`: the subnet blocks the namespace serves, one a line.
    pub subnets: PathBuf,
    /// `dnsmasq.pid`, `dnsmasq.log`, `leases`: the VPC's DHCP server.
    pub dnsmasq_pid: PathBuf,
    pub dnsmasq_log: PathBuf,
    pub leases: PathBuf,
    /// `dhcp-hosts/`: one file per network interface (MAC and address).
    pub dhcp_hosts: PathBuf,
    /// `leg.pid`: pasta, the internet gateway's outbound leg.
    pub leg_pid: PathBuf,
}

impl VpcNetworkFiles {
    /// The files of the VPC network kept in `dir`.
    pub fn in_dir(dir: PathBuf) -> Self {
        VpcNetworkFiles {
            lock: dir.join("lock"),
            members: dir.join("members"),
            netns: dir.join("netns"),
            subnets: dir.join("subnets"),
            dnsmasq_pid: dir.join("dnsmasq.pid"),
            dnsmasq_log: dir.join("dnsmasq.log"),
            leases: dir.join("leases"),
            dhcp_hosts: dir.join("dhcp-hosts"),
            leg_pid: dir.join("leg.pid"),
            dir,
        }
    }
}
