//! `AttachVolume` and `DetachVolume`: a volume joins or leaves an
//! instance, hot-plugged under a running guest or recorded for a stopped one.

use super::*;

/// How long a detach waits for the guest to let go of the disk.
const DETACH_TIMEOUT_SECS: u64 = 30;
/// The same with `Force`.
const FORCED_DETACH_TIMEOUT_SECS: u64 = 5;

/// `AttachVolume`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct AttachVolumeRequest {
    pub device: String,
    pub instance_id: String,
    pub volume_id: String,
}

/// `DetachVolume`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DetachVolumeRequest {
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub force: Option<bool>,
    #[serde(default)]
    pub instance_id: Option<String>,
    pub volume_id: String,
}

/// EC2's `VolumeAttachment` (AttachVolume's and DetachVolume's result).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeAttachment {
    pub attach_time: Option<String>,
    pub device: String,
    pub instance_id: String,
    pub state: String,
    pub volume_id: String,
    pub delete_on_termination: bool,
}

impl Service {
    /// `AttachVolume`: to a running instance (hot-plugged) or a stopped one
    /// (a disk from its next start).
    pub fn attach_volume(
        &mut self,
        caller: &Caller,
        req: AttachVolumeRequest,
    ) -> Result<VolumeAttachment> {
        check_volume_id(&req.volume_id)?;
        check_instance_ids(std::slice::from_ref(&req.instance_id))?;
        check_device_name(&req.device)?;
        let _ilock = object_lock::lock(&self.paths, &req.instance_id)?;
        let _vlock = object_lock::lock(&self.paths, &req.volume_id)?;
        let mut i = self
            .owned_instances(caller, std::slice::from_ref(&req.instance_id))?
            .remove(0);
        let mut v = self.owned_volume(caller, &req.volume_id)?;
        if v.instance_id.is_some() || v.state == VolumeStateName::InUse {
            return Err(Error::new(
                ErrorCode::VolumeInUse,
                format!("{} is already attached to an instance", v.volume_id),
            ));
        }
        if v.state != VolumeStateName::Available {
            return Err(Error::new(
                ErrorCode::IncorrectState,
                format!("The volume '{}' is not 'available'.", v.volume_id),
            ));
        }
        if v.availability_zone != zone_of(&i.region) {
            return Err(Error::new(
                ErrorCode::InvalidVolumeZoneMismatch,
                format!(
                    "The volume '{}' is not in the same availability zone as instance '{}'",
                    v.volume_id, i.instance_id
                ),
            ));
        }
        let running = match i.state {
            InstanceStateName::Running => true,
            InstanceStateName::Stopped => false,
            s => {
                return Err(Error::incorrect_instance_state(format!(
                    "Instance '{}' is not 'running' or 'stopped' (it is {s}).",
                    i.instance_id
                )))
            }
        };
        if i.devices.iter().any(|d| d.device_name == req.device) {
            return Err(Error::invalid_value(format!(
                "Invalid value '{}' for unixDevice. Attachment point {} is already in use",
                req.device, req.device
            )));
        }
        let attach_time = now();
        if running {
            let intent = AttachIntent {
                volume_id: v.volume_id.clone(),
                instance_id: i.instance_id.clone(),
                device: req.device.clone(),
                op: "attach".into(),
                delete_on_termination: false,
                started: attach_time.clone(),
            };
            self.store.write(|db| db.put_attach_intent(&intent))?;
            failpoint("attach-volume:intent")?;
            let path = std::path::absolute(self.paths.volume(&v.volume_id))
                .map_err(|e| Error::internal("Cannot resolve the volume's path").with_source(e))?;
            let plugged = self.disk_request(
                &i.instance_id,
                DiskRequest::Attach {
                    serial: crate::machine::volume_serial(&v.volume_id),
                    path,
                },
            );
            if let Err(e) = plugged {
                self.store
                    .write(|db| db.delete_attach_intent(&intent.volume_id))?;
                return Err(Error::internal(format!(
                    "The supervisor of {} could not plug {} in",
                    i.instance_id, v.volume_id
                ))
                .with_source(e));
            }
            failpoint("attach-volume:plugged")?;
        }
        v.state = VolumeStateName::InUse;
        v.instance_id = Some(i.instance_id.clone());
        v.device = Some(req.device.clone());
        v.attach_time = Some(attach_time.clone());
        v.delete_on_termination = false;
        i.devices.push(InstanceDevice {
            device_name: req.device.clone(),
            volume_id: Some(v.volume_id.clone()),
            virtual_name: None,
            size_gib: v.size_gib,
            delete_on_termination: false,
            attach_time: attach_time.clone(),
        });
        self.store.write(|db| -> Result<()> {
            db.put_volume(&v)?;
            db.put_instance(&i)?;
            db.delete_attach_intent(&v.volume_id)?;
            Ok(())
        })?;
        Ok(VolumeAttachment {
            attach_time: Some(attach_time),
            device: req.device,
            instance_id: i.instance_id,
            state: "attached".into(),
            volume_id: v.volume_id,
            delete_on_termination: false,
        })
    }

    /// `DetachVolume`: the guest of a running instance is asked to let go
    /// first (`Force` waits less); the root volume of a running instance
    /// stays.
    pub fn detach_volume(
        &mut self,
        caller: &Caller,
        req: DetachVolumeRequest,
    ) -> Result<VolumeAttachment> {
        check_volume_id(&req.volume_id)?;
        if let Some(iid) = &req.instance_id {
            check_instance_ids(std::slice::from_ref(iid))?;
        }
        self.refresh_instances(caller)?;
        let v = self.owned_volume(caller, &req.volume_id)?;
        let Some(iid) = v.instance_id.clone() else {
            return Err(Error::new(
                ErrorCode::IncorrectState,
                format!("Volume '{}' is in the '{}' state.", v.volume_id, v.state),
            ));
        };
        let wrong_instance = req.instance_id.as_ref().is_some_and(|x| *x != iid);
        let wrong_device = req
            .device
            .as_ref()
            .is_some_and(|d| Some(d) != v.device.as_ref());
        if wrong_instance || wrong_device {
            return Err(Error::new(
                ErrorCode::InvalidAttachmentNotFound,
                format!(
                    "Volume '{}' can not be detached from '{}' as '{}': it is attached to '{iid}' as '{}'",
                    v.volume_id,
                    req.instance_id.as_deref().unwrap_or(&iid),
                    req.device.as_deref().unwrap_or_default(),
                    v.device.as_deref().unwrap_or_default()
                ),
            ));
        }
        let _ilock = object_lock::lock(&self.paths, &iid)?;
        let _vlock = object_lock::lock(&self.paths, &v.volume_id)?;
        let mut i = self
            .owned_instances(caller, std::slice::from_ref(&iid))?
            .remove(0);
        let mut v = self.owned_volume(caller, &req.volume_id)?;
        if v.instance_id.as_deref() != Some(iid.as_str()) {
            return Err(Error::new(
                ErrorCode::IncorrectState,
                format!("Volume '{}' is in the '{}' state.", v.volume_id, v.state),
            ));
        }
        let device = v.device.clone().unwrap_or_default();
        let running = match i.state {
            InstanceStateName::Running => true,
            InstanceStateName::Stopped => false,
            s => {
                return Err(Error::incorrect_instance_state(format!(
                    "Instance '{iid}' is {s}; detach volumes when it is running or stopped."
                )))
            }
        };
        if running && device == i.root_device_name {
            return Err(Error::new(
                ErrorCode::IncorrectState,
                format!(
                    "Unable to detach root volume '{}' from instance '{iid}'",
                    v.volume_id
                ),
            ));
        }
        if running {
            let intent = AttachIntent {
                volume_id: v.volume_id.clone(),
                instance_id: iid.clone(),
                device: device.clone(),
                op: "detach".into(),
                delete_on_termination: v.delete_on_termination,
                started: now(),
            };
            self.store.write(|db| db.put_attach_intent(&intent))?;
            failpoint("detach-volume:intent")?;
            let timeout_secs = if req.force == Some(true) {
                FORCED_DETACH_TIMEOUT_SECS
            } else {
                DETACH_TIMEOUT_SECS
            };
            let unplugged = self.disk_request(
                &iid,
                DiskRequest::Detach {
                    serial: crate::machine::volume_serial(&v.volume_id),
                    timeout_secs,
                },
            );
            if let Err(e) = unplugged {
                self.store
                    .write(|db| db.delete_attach_intent(&intent.volume_id))?;
                return Err(Error::new(
                    ErrorCode::IncorrectState,
                    format!(
                        "The guest of {iid} did not release {}; it stays attached (retry, or stop the instance)",
                        v.volume_id
                    ),
                )
                .with_source(e));
            }
            failpoint("detach-volume:unplugged")?;
        }
        let attach_time = v.attach_time.clone();
        let delete_on_termination = v.delete_on_termination;
        v.state = VolumeStateName::Available;
        v.instance_id = None;
        v.device = None;
        v.attach_time = None;
        i.devices
            .retain(|d| d.volume_id.as_deref() != Some(v.volume_id.as_str()));
        self.store.write(|db| -> Result<()> {
            db.put_volume(&v)?;
            db.put_instance(&i)?;
            db.delete_attach_intent(&v.volume_id)?;
            Ok(())
        })?;
        Ok(VolumeAttachment {
            attach_time,
            device,
            instance_id: iid,
            state: "detached".into(),
            volume_id: v.volume_id,
            delete_on_termination,
        })
    }
}
