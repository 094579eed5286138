//! Start, stop, reboot and terminate: EC2's state rules checked for every
//! instance before any is touched, each instance changed under its lock,
//! the guest asked through its supervisor.

use super::*;

/// `StartInstances`, `RebootInstances` and `TerminateInstances`: the
/// instances to act on.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct InstanceIdsRequest {
    #[serde(default)]
    pub instance_ids: Vec<String>,
}

/// `StartInstances`.
pub type StartInstancesRequest = InstanceIdsRequest;

/// `RebootInstances`.
pub type RebootInstancesRequest = InstanceIdsRequest;

/// `TerminateInstances`.
pub type TerminateInstancesRequest = InstanceIdsRequest;

/// `StopInstances`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct StopInstancesRequest {
    #[serde(default)]
    pub instance_ids: Vec<String>,
    /// Cut the power instead of pressing the ACPI power button.
    #[serde(default)]
    pub force: Option<bool>,
    /// Save the guest's memory instead of shutting it down (an instance
    /// launched with `HibernationOptions.Configured`; [`crate::service::hibernation`]).
    #[serde(default)]
    pub hibernate: Option<bool>,
}

/// What `StartInstances` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StartInstancesResult {
    pub starting_instances: Vec<StateChange>,
}

/// What `StopInstances` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StopInstancesResult {
    pub stopping_instances: Vec<StateChange>,
}

/// What `TerminateInstances` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TerminateInstancesResult {
    pub terminating_instances: Vec<StateChange>,
}

impl Service {
    /// `StopInstances`: EBS-backed only; the guest gets the ACPI power button
    /// (or is cut off at once with `force`); with `hibernate`, an instance
    /// launched for hibernation saves its guest instead
    /// ([`crate::service::hibernation`]).
    pub fn stop_instances(
        &mut self,
        caller: &Caller,
        input: StopInstancesRequest,
    ) -> Result<StopInstancesResult> {
        if let Some(backend) = self.remote_backend(caller)? {
            if input.hibernate == Some(true) {
                return Err(Error::new(
                    ErrorCode::UnsupportedOperation,
                    format!("Hibernation is not supported in region {}, whose instances run on a remote backend", caller.region),
                ));
            }
            let stopping_instances = self.remote_change(
                caller,
                &*backend,
                &input.instance_ids,
                crate::backend::PowerAction::Stop,
            )?;
            return Ok(StopInstancesResult { stopping_instances });
        }
        let (instance_ids, force) = (&input.instance_ids, input.force.unwrap_or(false));
        let hibernate = input.hibernate.unwrap_or(false);
        let (_locks, instances) = self.lock_owned_instances(caller, instance_ids)?;
        self.check_api_protection(&instances, "stopped")?;
        for i in &instances {
            if i.root_device_type == RootDeviceType::InstanceStore {
                return Err(Error::new(
                    ErrorCode::UnsupportedOperation,
                    format!("The instance '{}' does not have an 'ebs' root device type and cannot be stopped.", i.instance_id),
                ));
            }
            if i.state == InstanceStateName::Terminated
                || i.state == InstanceStateName::ShuttingDown
            {
                return Err(Error::incorrect_instance_state(format!(
                    "The instance '{}' is not in a state from which it can be stopped.",
                    i.instance_id
                )));
            }
            if hibernate {
                crate::service::hibernation::check_stop(i)?;
            }
        }
        let mut changes = Vec::new();
        for mut i in instances {
            let previous = i.state;
            if matches!(
                previous,
                InstanceStateName::Pending
                    | InstanceStateName::Running
                    | InstanceStateName::Stopping
            ) {
                i.state = InstanceStateName::Stopping;
                i.updated = now();
                let s = i.clone();
                self.store.write(|db| db.put_instance(&s))?;
                if hibernate && previous == InstanceStateName::Running {
                    self.ask_supervisor(&i.instance_id, |c| c.hibernate())?;
                } else {
                    self.ask_supervisor(&i.instance_id, |c| c.stop(force))?;
                }
            }
            changes.push(StateChange {
                current_state: InstanceStateShape::of(i.state),
                instance_id: i.instance_id.clone(),
                previous_state: InstanceStateShape::of(previous),
            });
        }
        Ok(StopInstancesResult {
            stopping_instances: changes,
        })
    }

    /// Send a request to an instance's supervisor; a supervisor that is already
    /// gone is not an error (reconciliation settles the instance).
    pub(super) fn ask_supervisor(
        &mut self,
        instance_id: &str,
        f: impl FnOnce(&mut SupervisorClient) -> std::result::Result<(), supervisor::ClientError>,
    ) -> Result<()> {
        let socket = self.paths.control_socket(instance_id);
        match SupervisorClient::connect(&socket) {
            Ok(mut c) => match f(&mut c) {
                Ok(()) => Ok(()),
                Err(e) if !supervisor::probe(&self.paths, instance_id).supervisor_alive => {
                    tracing::debug!("supervisor of {instance_id} went away: {e}");
                    Ok(())
                }
                Err(e) => Err(e.into()),
            },
            Err(e) => {
                if supervisor::probe(&self.paths, instance_id).supervisor_alive {
                    Err(e.into())
                } else {
                    Ok(())
                }
            }
        }
    }

    /// `StartInstances`: boot stopped EBS-backed instances again.
    pub fn start_instances(
        &mut self,
        caller: &Caller,
        input: StartInstancesRequest,
    ) -> Result<StartInstancesResult> {
        if let Some(backend) = self.remote_backend(caller)? {
            let starting_instances = self.remote_change(
                caller,
                &*backend,
                &input.instance_ids,
                crate::backend::PowerAction::Start,
            )?;
            return Ok(StartInstancesResult { starting_instances });
        }
        let instance_ids = &input.instance_ids;
        let (_locks, instances) = self.lock_owned_instances(caller, instance_ids)?;
        for i in &instances {
            if !matches!(
                i.state,
                InstanceStateName::Stopped
                    | InstanceStateName::Running
                    | InstanceStateName::Pending
            ) {
                return Err(Error::incorrect_instance_state(format!(
                    "The instance '{}' is not in a state from which it can be started.",
                    i.instance_id
                )));
            }
        }
        let mut changes = Vec::new();
        for mut i in instances {
            let previous = i.state;
            if previous == InstanceStateName::Stopped {
                let taken = self.store.read(|db| db.ports_in_use())?;
                let taken: Vec<u16> = taken
                    .into_iter()
                    .filter(|p| Some(*p) != i.ssh_port)
                    .collect();
                if i.ssh_port.is_none_or(|p| {
                    taken.contains(&p) || std::net::TcpListener::bind(("127.0.0.1", p)).is_err()
                }) {
                    i.ssh_port = Some(free_port(&taken)?);
                }
                let resume = self.take_resume(&mut i);
                i.state = InstanceStateName::Pending;
                i.state_reason = None;
                i.updated = now();
                self.prepare_boot(&i, resume)?;
                let s = i.clone();
                self.store.write(|db| db.put_instance(&s))?;
                if let Err(e) = self.spawn_supervisor(&i.instance_id, "start-instances") {
                    self.record_exit(
                        &i.instance_id,
                        None,
                        &format!("The supervisor could not start: {e}"),
                    )?;
                }
            }
            changes.push(StateChange {
                current_state: InstanceStateShape::of(i.state),
                instance_id: i.instance_id.clone(),
                previous_state: InstanceStateShape::of(previous),
            });
        }
        Ok(StartInstancesResult {
            starting_instances: changes,
        })
    }

    /// `RebootInstances`: a reset of running instances; every disk is kept.
    pub fn reboot_instances(
        &mut self,
        caller: &Caller,
        input: RebootInstancesRequest,
    ) -> Result<()> {
        if let Some(backend) = self.remote_backend(caller)? {
            self.remote_change(
                caller,
                &*backend,
                &input.instance_ids,
                crate::backend::PowerAction::Reboot,
            )?;
            return Ok(());
        }
        let instance_ids = &input.instance_ids;
        let (_locks, instances) = self.lock_owned_instances(caller, instance_ids)?;
        for i in &instances {
            if i.state != InstanceStateName::Running && i.state != InstanceStateName::Pending {
                return Err(Error::incorrect_instance_state(format!(
                    "The instance '{}' is not running.",
                    i.instance_id
                )));
            }
        }
        for i in instances {
            self.ask_supervisor(&i.instance_id, |c| c.reboot())?;
        }
        Ok(())
    }

    /// `TerminateInstances`.
    pub fn terminate_instances(
        &mut self,
        caller: &Caller,
        input: TerminateInstancesRequest,
    ) -> Result<TerminateInstancesResult> {
        let instance_ids = &input.instance_ids;
        if instance_ids.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidParameterCombination,
                "No instances specified",
            ));
        }
        if let Some(backend) = self.remote_backend(caller)? {
            let terminating_instances = self.remote_change(
                caller,
                &*backend,
                instance_ids,
                crate::backend::PowerAction::Delete,
            )?;
            return Ok(TerminateInstancesResult {
                terminating_instances,
            });
        }
        let (_locks, instances) = self.lock_owned_instances(caller, instance_ids)?;
        self.check_api_protection(&instances, "terminated")?;
        let mut changes = Vec::new();
        for mut i in instances {
            let previous = i.state;
            match previous {
                InstanceStateName::Terminated | InstanceStateName::ShuttingDown => {}
                InstanceStateName::Stopped => {
                    let Some(_fence) = self.fence(&i.instance_id)? else {
                        return Err(Error::incorrect_instance_state(format!(
                            "The instance '{}' is stopped but its supervisor runs; try again",
                            i.instance_id
                        )));
                    };
                    i.state_reason =
                        Some("Client.UserInitiatedShutdown: User initiated shutdown".into());
                    self.settle(&mut i, InstanceStateName::Terminated)?;
                }
                _ => {
                    i.state = InstanceStateName::ShuttingDown;
                    i.updated = now();
                    let s = i.clone();
                    self.store.write(|db| db.put_instance(&s))?;
                    self.ask_supervisor(&i.instance_id, |c| c.stop(false))?;
                }
            }
            changes.push(StateChange {
                current_state: InstanceStateShape::of(i.state),
                instance_id: i.instance_id.clone(),
                previous_state: InstanceStateShape::of(previous),
            });
        }
        Ok(TerminateInstancesResult {
            terminating_instances: changes,
        })
    }

    /// Terminate one instance without the ACPI grace period and wait until it is
    /// terminated (boot tests and failed bakes clean up with this).
    pub fn terminate_now(&mut self, caller: &Caller, instance_id: &str) -> Result<()> {
        let (_locks, mut found) = self.lock_owned_instances(caller, &[instance_id.to_string()])?;
        let mut i = found.remove(0);
        if i.state == InstanceStateName::Terminated {
            return Ok(());
        }
        if supervisor::probe(&self.paths, instance_id).supervisor_alive {
            i.state = InstanceStateName::ShuttingDown;
            i.updated = now();
            let s = i.clone();
            self.store.write(|db| db.put_instance(&s))?;
            let socket = self.paths.control_socket(instance_id);
            if let Ok(mut c) = SupervisorClient::connect(&socket) {
                let _ = c.stop_and_wait(true);
            }
        }
        self.refresh_instances(caller)?;
        let mut i = self
            .owned_instances(caller, &[instance_id.to_string()])?
            .remove(0);
        if i.state != InstanceStateName::Terminated {
            let Some(_fence) = self.fence(instance_id)? else {
                return Err(Error::incorrect_instance_state(format!(
                    "The supervisor of '{instance_id}' did not stop; terminate it again"
                )));
            };
            i.state_reason = Some("Client.UserInitiatedShutdown: User initiated shutdown".into());
            self.settle(&mut i, InstanceStateName::Terminated)?;
        }
        Ok(())
    }
}
