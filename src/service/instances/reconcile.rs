//! Stored intent reconciled with live facts: whether the supervisor and
//! QEMU run and how the guest ended, probed under each instance's lock and
//! decided by the pure [`crate::domain::reconcile`]; settling an instance
//! into a state (volumes, files, records); the one poller every waiter
//! uses ([`Service::wait_for_state`]); and looking up the caller's
//! instances (locked or not).

use super::*;

/// Why [`Service::wait_for_state`] ended without every object in the
/// wanted state; each waiter turns it into its own error.
#[derive(Debug)]
pub enum WaitFailure<S> {
    /// `id` is in `state`, which it cannot leave for the wanted one.
    Hopeless {
        /// The object.
        id: String,
        /// Its state.
        state: S,
    },
    /// The deadline passed; `last` is what the last poll read.
    TimedOut {
        /// Each object's id and state at the last poll.
        last: Vec<(String, S)>,
    },
    /// Reading the states failed.
    Error(Error),
}

impl Service {
    /// Record that an instance's guest ended outside the normal flow (e.g. the
    /// supervisor could not start), and settle it.
    pub(super) fn record_exit(
        &mut self,
        instance_id: &str,
        code: Option<&str>,
        message: &str,
    ) -> Result<()> {
        let Some(mut i) = self.store.read(|db| db.instance(instance_id))? else {
            return Ok(());
        };
        // A supervisor that came up late after all runs the instance.
        let Some(_fence) = self.fence(instance_id)? else {
            return Ok(());
        };
        self.withdraw_launch(instance_id);
        let target = if i.root_device_type == RootDeviceType::InstanceStore {
            InstanceStateName::Terminated
        } else {
            InstanceStateName::Stopped
        };
        i.state_reason = Some(format!(
            "{}: {message}",
            code.unwrap_or("Server.InternalError")
        ));
        self.settle(&mut i, target)
    }

    /// Move an instance to a final state (`stopped` or `terminated`) and clean up its disks.
    /// The caller holds the instance's lock and knows its supervisor is
    /// gone (under [`Self::fence`]); a QEMU left behind is ended first, so no
    /// disk is removed under a live guest.
    pub(super) fn settle(
        &mut self,
        i: &mut InstanceState,
        target: InstanceStateName,
    ) -> Result<()> {
        self.ensure_guest_gone(&i.instance_id)?;
        i.state = target;
        i.updated = now();
        let runtime = self.paths.instance_runtime_dir(&i.instance_id);
        // Instance-store disks never survive a stop or terminate.
        let _ = std::fs::remove_dir_all(&runtime);
        let mut delete_files = Vec::new();
        let paths = self.paths.clone();
        self.settle_hibernation(i, target);
        let snapshot = i.clone();
        self.store.write(|db| -> Result<()> {
            db.put_instance(&snapshot)?;
            if target == InstanceStateName::Terminated {
                for d in &snapshot.devices {
                    let Some(vid) = &d.volume_id else { continue };
                    let Some(mut v) = db.volume(vid)? else {
                        continue;
                    };
                    if v.delete_on_termination {
                        db.delete_volume(vid)?;
                        delete_files.push(paths.volume(vid));
                    } else {
                        v.state = VolumeStateName::Available;
                        v.instance_id = None;
                        v.device = None;
                        v.attach_time = None;
                        db.put_volume(&v)?;
                    }
                }
            }
            Ok(())
        })?;
        for f in delete_files {
            let _ = std::fs::remove_file(f);
        }
        self.release_instance_addresses(&i.instance_id, target == InstanceStateName::Terminated)?;
        if target == InstanceStateName::Terminated {
            for f in [
                self.paths.seed_image(&i.instance_id),
                self.paths.uefi_vars(&i.instance_id),
            ] {
                let _ = std::fs::remove_file(f);
            }
        }
        Ok(())
    }

    /// Wait (bounded) until no QEMU of the instance is alive, killing one
    /// that outlived its supervisor (its parent-death signal is
    /// asynchronous); refuse to go on while one still runs.
    pub(super) fn ensure_guest_gone(&self, instance_id: &str) -> Result<()> {
        let mut deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut killed = false;
        loop {
            let pids = supervisor::qemu_pids(instance_id);
            if pids.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                if killed {
                    return Err(Error::internal(
                        format!(
                            "QEMU (pid {pids:?}) of {instance_id} does not exit; its disks are kept; end it and retry"
                        ),
                    ));
                }
                for pid in &pids {
                    tracing::warn!(
                        "QEMU {pid} of {instance_id} outlived its supervisor; killing it"
                    );
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                killed = true;
                deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Hold the instance's pid file while no supervisor does (see
    /// [`supervisor::fence`]); `None` when a supervisor runs it.
    pub(super) fn fence(
        &self,
        instance_id: &str,
    ) -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
        supervisor::fence(&self.paths, instance_id).map_err(|e| {
            Error::internal(format!("Cannot lock the pid file of {instance_id}")).with_source(e)
        })
    }

    /// Remove the launch spec of an instance whose launch or start was
    /// interrupted (under the fence): a supervisor spawned for it that has
    /// not taken the pid file yet then never starts QEMU. (Once a
    /// supervisor has run for the current launch, none other can be on its
    /// way, and the spec stays for inspection.)
    pub(super) fn withdraw_launch(&self, instance_id: &str) {
        let _ = std::fs::remove_file(self.paths.launch_spec(instance_id));
    }

    /// Whether a supervisor started for the instance since its record was
    /// last written (the launch or start that made it `pending`); and
    /// whether one ever started.
    pub(super) fn supervisor_runs(&self, i: &InstanceState) -> (bool, bool) {
        let started: Vec<chrono::DateTime<chrono::Utc>> =
            supervisor::read_events(&self.paths.events(&i.instance_id))
                .unwrap_or_default()
                .into_iter()
                .filter(|e| matches!(e.event, supervisor::Event::SupervisorStarted { .. }))
                .map(|e| e.ts)
                .collect();
        let since = match chrono::DateTime::parse_from_rfc3339(&i.updated) {
            Ok(written) => started.iter().any(|t| *t >= written),
            // Cannot tell: assume it started, so the usual rules apply.
            Err(_) => !started.is_empty(),
        };
        (since, !started.is_empty())
    }

    /// Reconcile recorded states with live facts (supervisor, QEMU, exit
    /// record). Each instance is reconciled under its lock; one whose lock
    /// another operation holds (a launch, start, stop, terminate or
    /// create-image in progress) is shown as recorded, never judged dead.
    pub fn refresh_instances(&mut self, caller: &Caller) -> Result<()> {
        let live: Vec<InstanceState> = self
            .store
            .read(|db| db.live_instances())?
            .into_iter()
            .filter(|i| i.region == caller.region)
            .collect();
        for i in live {
            if i.state == InstanceStateName::Stopped {
                continue;
            }
            let Some(_lock) = object_lock::try_lock(&self.paths, &i.instance_id)? else {
                continue;
            };
            self.reconcile_locked(&i.instance_id)?;
        }
        let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1))
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        let purged = self.store.write(|db| db.purge_terminated(&hour_ago))?;
        for id in purged {
            let _ = std::fs::remove_dir_all(self.paths.instance_dir(&id));
        }
        Ok(())
    }

    /// The one state poller, used by every waiter (the CLI's `wait`,
    /// create-image's wait for a stop, the bake pollers): read the states of
    /// some objects with `read` every `interval` until all are `want`; fail
    /// as soon as one is in a `hopeless` state (one it cannot leave for
    /// `want`), or when `deadline` passes. `read` sees the service, so it
    /// may refresh, describe or read records as its caller needs.
    pub fn wait_for_state<S: Copy + PartialEq>(
        &mut self,
        want: S,
        hopeless: &[S],
        deadline: std::time::Instant,
        interval: std::time::Duration,
        mut read: impl FnMut(&mut Service) -> Result<Vec<(String, S)>>,
    ) -> std::result::Result<Vec<(String, S)>, WaitFailure<S>> {
        loop {
            let states = read(self).map_err(WaitFailure::Error)?;
            if !states.is_empty() && states.iter().all(|(_, s)| *s == want) {
                return Ok(states);
            }
            if let Some((id, s)) = states.iter().find(|(_, s)| hopeless.contains(s)) {
                return Err(WaitFailure::Hopeless {
                    id: id.clone(),
                    state: *s,
                });
            }
            if std::time::Instant::now() >= deadline {
                return Err(WaitFailure::TimedOut { last: states });
            }
            std::thread::sleep(interval);
        }
    }

    /// Reconcile one instance with its live facts; the caller holds its lock.
    ///
    /// "The supervisor is gone" is decided only under the fence (the pid
    /// file's lock), never from a missing pid alone: a supervisor that is
    /// just starting holds the pid file or, if it has not taken it yet, is
    /// withdrawn. A `pending` instance whose supervisor never started for
    /// this launch (its launcher was killed) is settled as EC2 settles a
    /// failed launch: `terminated` with `Server.InternalError`, its volumes
    /// following DeleteOnTermination; an interrupted start of a stopped
    /// instance goes back to `stopped`.
    pub(crate) fn reconcile_locked(&mut self, instance_id: &str) -> Result<()> {
        let Some(i) = self.store.read(|db| db.instance(instance_id))? else {
            return Ok(());
        };
        if matches!(
            i.state,
            InstanceStateName::Stopped | InstanceStateName::Terminated
        ) {
            return Ok(());
        }
        // The fence (if taken) is held until the transition is applied.
        let Some((live, _fence)) = self.live_facts(&i)? else {
            return Ok(());
        };
        let recorded = Recorded {
            state: i.state,
            root_device_type: i.root_device_type,
            shutdown_behavior: i.shutdown_behavior,
        };
        let transition = reconcile(&recorded, &live);
        self.apply_transition(i, transition)
    }

    /// Probe an instance's supervisor and guest. When no live supervisor is
    /// named in the pid file, the facts are gathered under the fence, which
    /// is returned to be held while acting on them; `None` when a
    /// supervisor holds the pid file (starting or ending: alive).
    pub(super) fn live_facts(
        &self,
        i: &InstanceState,
    ) -> Result<Option<(LiveFacts, Option<nix::fcntl::Flock<std::fs::File>>)>> {
        let facts = supervisor::probe(&self.paths, &i.instance_id);
        if facts.supervisor_alive {
            let live = LiveFacts {
                supervisor_alive: true,
                qemu_alive: facts.qemu_alive,
                last_exit: facts.last_exit.as_ref().map(|e| e.reason),
                guest_running: i.state == InstanceStateName::Pending && self.guest_running(i),
                ..LiveFacts::default()
            };
            return Ok(Some((live, None)));
        }
        let Some(fence) = self.fence(&i.instance_id)? else {
            return Ok(None);
        };
        let facts = supervisor::probe(&self.paths, &i.instance_id);
        let (started_since, ever_started) = self.supervisor_runs(i);
        let live = LiveFacts {
            supervisor_alive: false,
            qemu_alive: facts.qemu_alive,
            last_exit: facts.last_exit.as_ref().map(|e| e.reason),
            guest_running: false,
            started_since,
            ever_started,
        };
        Ok(Some((live, Some(fence))))
    }

    /// Apply what [`reconcile`] decided to the record (and, when the guest
    /// is gone, to its files); the caller holds the lock and any fence.
    pub(super) fn apply_transition(
        &mut self,
        mut i: InstanceState,
        transition: Transition,
    ) -> Result<()> {
        match transition {
            Transition::Keep => Ok(()),
            Transition::Running => {
                i.state = InstanceStateName::Running;
                i.updated = now();
                self.store.write(|db| db.put_instance(&i))?;
                Ok(())
            }
            Transition::Settle {
                to,
                reason,
                withdraw_launch,
            } => {
                if withdraw_launch {
                    // A supervisor its launcher spawned may still be on its way.
                    self.withdraw_launch(&i.instance_id);
                }
                i.state_reason = Some(reason);
                self.settle(&mut i, to)
            }
        }
    }

    /// Whether the instance's current supervisor reported the guest running
    /// (a `guest-running` event since its last `supervisor-started`).
    pub(super) fn guest_running(&self, i: &InstanceState) -> bool {
        supervisor::read_events(&self.paths.events(&i.instance_id))
            .unwrap_or_default()
            .iter()
            .rev()
            .take_while(|e| !matches!(e.event, supervisor::Event::SupervisorStarted { .. }))
            .any(|e| matches!(e.event, supervisor::Event::GuestRunning))
    }

    /// Take the locks of `ids_` (in id order, so two operations on the same
    /// instances never deadlock) and return them reconciled. Start, stop,
    /// reboot and terminate hold these locks while they act, so they
    /// serialise with each other, with launches, create-image and
    /// reconciliation in every process.
    pub(super) fn lock_owned_instances(
        &mut self,
        caller: &Caller,
        ids_: &[String],
    ) -> Result<(Vec<ObjectLock>, Vec<InstanceState>)> {
        check_instance_ids(ids_)?;
        let mut sorted = ids_.to_vec();
        sorted.sort();
        sorted.dedup();
        let locks = sorted
            .iter()
            .map(|id| object_lock::lock(&self.paths, id))
            .collect::<Result<Vec<_>>>()?;
        let instances = self.owned_instances(caller, ids_)?;
        Ok((locks, instances))
    }

    /// The caller's instances with these ids (states reconciled first), or
    /// `InvalidInstanceID.Malformed` / `.NotFound` naming the ids.
    pub(in crate::service) fn owned_instances(
        &mut self,
        caller: &Caller,
        ids_: &[String],
    ) -> Result<Vec<InstanceState>> {
        check_instance_ids(ids_)?;
        self.refresh_instances(caller)?;
        self.store.read(|db| -> Result<Vec<InstanceState>> {
            let mut out = Vec::new();
            let mut missing = Vec::new();
            for id in ids_ {
                match db.instance(id)? {
                    Some(i) if i.region == caller.region && i.owner_id == caller.account => {
                        out.push(i)
                    }
                    _ => missing.push(id.clone()),
                }
            }
            super::instances_missing(&missing)?;
            Ok(out)
        })
    }
}
