//! Recovery of volume operations a killed process left half-done (the
//! table in the parent module's doc): the real files and the running guest
//! decide.

use super::*;

impl Service {
    /// Settle what killed volume operations left (see the module doc); one
    /// that cannot be settled now is logged and left for the next pass.
    pub(crate) fn recover_volumes(&mut self) -> Result<()> {
        let (creating, deleting, intents, modifying) = self.store.read(|db| -> Result<_> {
            Ok((
                db.volumes_in_state(VolumeStateName::Creating)?,
                db.volumes_in_state(VolumeStateName::Deleting)?,
                db.attach_intents()?,
                db.volume_modifications()?
                    .into_iter()
                    .filter(|m| m.state == "modifying")
                    .collect::<Vec<_>>(),
            ))
        })?;
        for v in creating {
            let Some(_lock) = try_lock(&self.paths, &v.volume_id)? else {
                continue;
            };
            let path = self.paths.volume(&v.volume_id);
            let whole = crate::disk::info(&path).is_ok_and(|i| i.format == "qcow2");
            let id = v.volume_id.clone();
            self.store.write(|db| -> Result<()> {
                match db.volume(&id)? {
                    Some(mut v) if v.state == VolumeStateName::Creating => {
                        if whole {
                            v.state = VolumeStateName::Available;
                            db.put_volume(&v)?;
                        } else {
                            db.delete_volume(&id)?;
                        }
                    }
                    _ => {}
                }
                Ok(())
            })?;
            if !whole {
                let _ = std::fs::remove_file(&path);
            }
            tracing::debug!(volume = %v.volume_id, kept = whole, "recovery: interrupted create-volume settled");
        }
        for v in deleting {
            let Some(_lock) = try_lock(&self.paths, &v.volume_id)? else {
                continue;
            };
            if let Err(e) = self.finish_volume_delete(&v.volume_id) {
                tracing::warn!(volume = %v.volume_id, "recovery: cannot finish the delete: {e}");
            }
        }
        for intent in intents {
            let Some(_ilock) = try_lock(&self.paths, &intent.instance_id)? else {
                continue;
            };
            let Some(_vlock) = try_lock(&self.paths, &intent.volume_id)? else {
                continue;
            };
            if let Err(e) = self.settle_attach_intent(&intent) {
                tracing::warn!(volume = %intent.volume_id, "recovery: cannot settle the {}: {e}", intent.op);
            }
        }
        for m in modifying {
            let Some(v) = self.store.read(|db| db.volume(&m.volume_id))? else {
                continue;
            };
            let _ilock = match &v.instance_id {
                Some(iid) => match try_lock(&self.paths, iid)? {
                    Some(l) => Some(l),
                    None => continue,
                },
                None => None,
            };
            let Some(_vlock) = try_lock(&self.paths, &m.volume_id)? else {
                continue;
            };
            if let Err(e) = self.settle_modification(v, m) {
                tracing::warn!("recovery: cannot settle a volume modification: {e}");
            }
        }
        Ok(())
    }

    /// An attach or detach whose writer died: the guest decides.
    fn settle_attach_intent(&mut self, intent: &AttachIntent) -> Result<()> {
        let serial = crate::machine::volume_serial(&intent.volume_id);
        let has_disk = self
            .disk_request(
                &intent.instance_id,
                DiskRequest::Find {
                    serial: serial.clone(),
                },
            )
            .map(|v| !v.is_null())
            .unwrap_or(false);
        // Attach or detach alike: the volume is attached iff the guest has it.
        let attached = has_disk;
        let intent = intent.clone();
        self.store.write(|db| -> Result<()> {
            db.delete_attach_intent(&intent.volume_id)?;
            let (Some(mut v), Some(mut i)) = (
                db.volume(&intent.volume_id)?,
                db.instance(&intent.instance_id)?,
            ) else {
                return Ok(());
            };
            let listed = i
                .devices
                .iter()
                .any(|d| d.volume_id.as_deref() == Some(intent.volume_id.as_str()));
            if attached && !listed {
                let when = now();
                v.state = VolumeStateName::InUse;
                v.instance_id = Some(i.instance_id.clone());
                v.device = Some(intent.device.clone());
                v.attach_time = Some(when.clone());
                v.delete_on_termination = intent.delete_on_termination;
                i.devices.push(InstanceDevice {
                    device_name: intent.device.clone(),
                    volume_id: Some(v.volume_id.clone()),
                    virtual_name: None,
                    size_gib: v.size_gib,
                    delete_on_termination: intent.delete_on_termination,
                    attach_time: when,
                });
            } else if !attached && listed {
                v.state = VolumeStateName::Available;
                v.instance_id = None;
                v.device = None;
                v.attach_time = None;
                i.devices
                    .retain(|d| d.volume_id.as_deref() != Some(v.volume_id.as_str()));
            }
            db.put_volume(&v)?;
            db.put_instance(&i)?;
            Ok(())
        })?;
        tracing::debug!(volume = %intent.volume_id, attached, "recovery: interrupted {} settled", intent.op);
        Ok(())
    }

    /// A modification whose writer died: the file's size decides.
    fn settle_modification(
        &mut self,
        mut v: VolumeState,
        mut m: VolumeModificationState,
    ) -> Result<()> {
        let size = crate::disk::info(&self.paths.volume(&v.volume_id))?.virtual_size;
        if size >= gib_to_bytes(m.target_size)? {
            m.state = "completed".into();
            v.size_gib = m.target_size;
            v.volume_type = m.target_type.clone();
            let perf = VolumePerformance {
                iops: m.target_iops,
                throughput: m.target_throughput,
            };
            m.end_time = Some(now());
            self.commit_modification(&v, &m, perf)
        } else {
            m.state = "failed".into();
            m.status_message =
                Some("The modification was interrupted; modify the volume again".into());
            m.end_time = Some(now());
            self.store.write(|db| db.put_volume_modification(&m))?;
            Ok(())
        }
    }
}
