//! CreateImage as EC2 answers it: the new AMI id comes back at once with the
//! image `pending`; the reboot (unless `NoReboot`) and the snapshots happen
//! after the call returns, in a worker process that outlives the request
//! (`amirun __create-image <ami-id>`, detached in its own session like a
//! supervisor), and the image then becomes `available`, or `failed` with a
//! `StateReason`. Clients poll with `wait image-available`.
//!
//! # Hand-over, crash-safe
//!
//! 1. The request checks what EC2 checks (name, instance, state, tags),
//!    takes the new AMI's object lock, records the AMI `pending` (the name
//!    is taken from here on) and writes the job (`paths.image_job`).
//! 2. It spawns the worker and waits for its "ready" line: the worker has
//!    taken its *worker lock* (`<ami-id>.worker`) by then. Only then does
//!    the request release the AMI's lock and return the id.
//! 3. The worker takes the AMI's lock and does what the synchronous
//!    CreateImage does (`Service::create_image_as`: intent, layers,
//!    commit, reboot around it), filling in the pending record. A failure
//!    marks the AMI `failed` with the error as its state reason; then the
//!    job goes.
//!
//! "AMI pending, its lock and its worker lock free" means the worker (or
//! the request before it) is gone: recovery ([`super::recovery`]) settles
//! its snapshots from the files as always, then the AMI here
//! (`Service::settle_image_job`): `available` when every snapshot stands,
//! `failed` otherwise. An instance the worker had stopped for the reboot is
//! left stopped.

use super::baking::CreateImageRequest;
use super::images::{check_name, check_unique_name, tags_for};
use super::object_lock;
use super::shapes::TagSpecification;
use super::{now, Caller, Error, ErrorCode, Result, Service, ServiceOptions};
use crate::domain::{ImageStateName, InstanceStateName, RootDeviceType, SnapshotStateName};
use crate::ids::{self, IdKind};
use crate::paths::Paths;
use crate::store::{BlockDeviceMapping, ImageState};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The hidden subcommand that runs a job (dispatched by `main`).
pub const WORKER_SUBCOMMAND: &str = "__create-image";

/// How long a request waits for its worker to say it is ready.
const READY_WAIT: Duration = Duration::from_secs(20);

/// `CreateImage` output.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateImageResult {
    pub image_id: String,
}

/// What a worker is to do: the request and who made it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    account: String,
    region: String,
    instance_id: String,
    name: String,
    description: Option<String>,
    no_reboot: bool,
    block_device_mappings: Vec<BlockDeviceMapping>,
    tag_specifications: Vec<TagSpecification>,
}

/// The AMI this process is the worker of (its own worker lock is re-entrant
/// here, so it must not judge itself gone).
static THIS_JOB: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The lock a live worker holds for its AMI's whole job.
fn worker_lock_id(image_id: &str) -> String {
    format!("{image_id}.worker")
}

impl Service {
    /// `CreateImage` (EC2's, asynchronous): see the module doc.
    pub fn create_image_async(
        &mut self,
        caller: &Caller,
        input: CreateImageRequest,
    ) -> Result<CreateImageResult> {
        if let Some(backend) = self.remote_backend(caller)? {
            let made = self.remote_create_image(caller, &*backend, &input)?;
            return Ok(CreateImageResult {
                image_id: made.image_id,
            });
        }
        check_name(&input.name)?;
        let id = input.instance_id.clone();
        let instance = self
            .owned_instances(caller, std::slice::from_ref(&id))?
            .remove(0);
        if instance.root_device_type != RootDeviceType::Ebs {
            return Err(Error::new(
                ErrorCode::UnsupportedOperation,
                format!("The instance '{id}' is instance store-backed; CreateImage needs an EBS-backed instance"),
            ));
        }
        if !matches!(
            instance.state,
            InstanceStateName::Pending
                | InstanceStateName::Running
                | InstanceStateName::Stopping
                | InstanceStateName::Stopped
        ) {
            return Err(Error::incorrect_instance_state(format!(
                "The instance '{id}' is {}; CreateImage needs it running or stopped",
                instance.state
            )));
        }
        let image_tags = tags_for(&input.tag_specifications, "image")?;
        tags_for(&input.tag_specifications, "snapshot")?;
        let image_id = ids::new_id(IdKind::Image);
        let _image_lock = object_lock::lock(&self.paths, &image_id)?;
        let image = ImageState {
            description: input.description.clone(),
            boot_mode: Some(instance.boot_mode),
            root_device_name: instance.root_device_name.clone(),
            state: ImageStateName::Pending,
            image_location: Some(format!("{}/{}", caller.account, input.name)),
            source_image_id: Some(instance.image_id.clone()),
            source_image_region: Some(instance.region.clone()),
            source_instance_id: Some(id.clone()),
            ..ImageState::private(
                &image_id,
                &caller.region,
                &caller.account,
                &input.name,
                instance.architecture,
                &now(),
            )
        };
        self.store.write(|db| -> Result<()> {
            check_unique_name(db, caller, &input.name)?;
            db.put_image(&image)?;
            for (k, v) in &image_tags {
                db.put_tag(&image_id, k, v)?;
            }
            Ok(())
        })?;
        let job = Job {
            account: caller.account.to_string(),
            region: caller.region.clone(),
            instance_id: id,
            name: input.name,
            description: input.description,
            no_reboot: input.no_reboot.unwrap_or(false),
            block_device_mappings: input.block_device_mappings,
            tag_specifications: input.tag_specifications,
        };
        let started = self
            .write_job(&image_id, &job)
            .and_then(|()| crate::failpoint::hit("create-image:job-written").map_err(Error::from))
            .and_then(|()| self.spawn_worker(&image_id));
        if let Err(e) = started {
            // Nothing was handed over: the request fails whole.
            let _ = self.store.write(|db| db.delete_image(&image_id));
            self.remove_job(&image_id);
            return Err(e);
        }
        Ok(CreateImageResult { image_id })
    }

    fn write_job(&self, image_id: &str, job: &Job) -> Result<()> {
        let dir = self.paths.image_job_dir();
        let io = |what: String| move |e: std::io::Error| Error::internal(what).with_source(e);
        std::fs::create_dir_all(&dir).map_err(io(format!("Cannot create {}", dir.display())))?;
        let path = self.paths.image_job(image_id);
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)
            .map_err(io(format!("Cannot write in {}", dir.display())))?;
        tmp.write_all(&serde_json::to_vec(job).expect("jobs serialize"))
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(io(format!("Cannot write {}", path.display())))?;
        tmp.persist(&path)
            .map_err(|e| io(format!("Cannot write {}", path.display()))(e.error))?;
        Ok(())
    }

    fn remove_job(&self, image_id: &str) {
        let _ = std::fs::remove_file(self.paths.image_job(image_id));
        let _ = std::fs::remove_file(self.paths.image_job_log(image_id));
    }

    /// Start the worker of `image_id` in a session of its own and wait until
    /// it holds its worker lock.
    fn spawn_worker(&self, image_id: &str) -> Result<()> {
        let exe = (self.options.supervisor_exe.clone())
            .ok_or_else(|| Error::internal("Cannot find the amirun executable"))?;
        let log_path = self.paths.image_job_log(image_id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| {
                Error::internal(format!("Cannot open {}", log_path.display())).with_source(e)
            })?;
        let mut cmd = Command::new(&exe);
        cmd.arg(WORKER_SUBCOMMAND)
            .arg(image_id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            Error::internal(format!("Cannot start {}", exe.display())).with_source(e)
        })?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the ready line, then reaps the worker whenever it ends.
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
            let _ = child.wait();
        });
        match rx.recv_timeout(READY_WAIT) {
            Ok(line) if line.trim() == "ready" => Ok(()),
            _ => Err(Error::internal(format!(
                "The CreateImage worker of {image_id} did not start (see {})",
                log_path.display()
            ))),
        }
    }

    /// Whether the worker of a pending AMI is alive (holds its worker lock).
    pub(crate) fn image_worker_alive(&self, image_id: &str) -> Result<bool> {
        if THIS_JOB.get().is_some_and(|j| j == image_id) {
            return Ok(true);
        }
        Ok(object_lock::try_lock(&self.paths, &worker_lock_id(image_id))?.is_none())
    }

    /// Whether a pending AMI was handed to a worker.
    pub(crate) fn has_image_job(&self, image_id: &str) -> bool {
        self.paths.image_job(image_id).exists()
    }

    /// Settle a `pending` AMI whose worker is gone (the caller holds the
    /// AMI's lock; its snapshots are settled already): `available` when it
    /// maps snapshots and every one is `completed`, else `failed`.
    pub(crate) fn settle_image_job(&mut self, image_id: &str) -> Result<()> {
        let whole = self.store.read(|db| -> Result<bool> {
            let Some(image) = db.image(image_id)? else {
                return Ok(false);
            };
            let snaps = image.snapshot_ids();
            let mut whole = !snaps.is_empty();
            for sid in snaps {
                whole &= db
                    .snapshot(&sid)?
                    .is_some_and(|s| s.state == SnapshotStateName::Completed);
            }
            Ok(whole)
        })?;
        if whole {
            self.store.write(|db| -> Result<()> {
                if let Some(mut image) = db.image(image_id)? {
                    if image.state == ImageStateName::Pending {
                        image.state = ImageStateName::Available;
                        db.put_image(&image)?;
                    }
                }
                Ok(())
            })?;
        } else {
            self.fail_image(
                image_id,
                "Server.InternalError: The CreateImage worker stopped before the snapshots were taken",
            )?;
        }
        self.remove_job(image_id);
        Ok(())
    }

    /// Mark a pending AMI `failed` with `reason` (`Code: message`); it maps
    /// no snapshots (what was taken for it was settled from the files).
    fn fail_image(&mut self, image_id: &str, reason: &str) -> Result<()> {
        self.store.write(|db| -> Result<()> {
            if let Some(mut image) = db.image(image_id)? {
                if image.state == ImageStateName::Pending {
                    image.state = ImageStateName::Failed;
                    image.state_reason = Some(reason.to_string());
                    for m in image.block_device_mappings.iter_mut() {
                        if let Some(e) = m.ebs.as_mut() {
                            e.snapshot_id = None;
                        }
                    }
                    db.put_image(&image)?;
                }
            }
            Ok(())
        })
    }

    /// The worker's part (see the module doc); the caller holds the worker lock.
    fn run_image_job(&mut self, image_id: &str) -> Result<()> {
        let _image_lock = object_lock::lock(&self.paths, image_id)?;
        let pending = self
            .store
            .read(|db| db.image(image_id))?
            .is_some_and(|i| i.state == ImageStateName::Pending);
        if !pending {
            self.remove_job(image_id);
            return Ok(());
        }
        let job: Option<Job> = std::fs::read(self.paths.image_job(image_id))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let Some(job) = job else {
            self.fail_image(
                image_id,
                "Server.InternalError: The CreateImage job could not be read",
            )?;
            self.remove_job(image_id);
            return Ok(());
        };
        crate::failpoint::hit("create-image:worker-started").map_err(Error::from)?;
        let caller = Caller::new(job.account.clone(), job.region.clone())?;
        let input = CreateImageRequest {
            instance_id: job.instance_id,
            name: job.name,
            description: job.description,
            no_reboot: Some(job.no_reboot),
            block_device_mappings: job.block_device_mappings,
            tag_specifications: job.tag_specifications,
            flatten: false,
        };
        let made = self.create_image_as(&caller, &input, Some(image_id));
        if let Err(e) = &made {
            let code = match e.code().http_status() {
                500.. => "Server.InternalError".to_string(),
                _ => format!("Client.{}", e.code().as_str()),
            };
            self.fail_image(image_id, &format!("{code}: {}", e.message()))?;
        }
        self.remove_job(image_id);
        made.map(|_| ())
    }
}

/// The body of `amirun __create-image <ami-id>`: take the worker lock, say
/// "ready" on stdout (the request waits for it), then do the job.
pub fn worker_main(image_id: &str) -> std::process::ExitCode {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        eprintln!("amirun {WORKER_SUBCOMMAND} {image_id}: {what}: {e}");
        std::process::ExitCode::FAILURE
    };
    if !ids::is_well_formed(IdKind::Image, image_id) {
        return fail("not an AMI id", &image_id);
    }
    let _ = THIS_JOB.set(image_id.to_string());
    let paths = Paths::from_env();
    let _worker = match object_lock::lock(&paths, &worker_lock_id(image_id)) {
        Ok(l) => l,
        Err(e) => return fail("cannot take the worker lock", &e),
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ready").and_then(|()| out.flush());
    }
    // Nobody reads stdout from here on.
    if let Ok(null) = std::fs::File::open("/dev/null") {
        use std::os::fd::AsRawFd;
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
    let mut service = match Service::open(paths, ServiceOptions::from_env()) {
        Ok(s) => s,
        Err(e) => return fail("cannot open the state", &e),
    };
    match service.run_image_job(image_id) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => fail("failed", &e),
    }
}
