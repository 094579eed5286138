//! `DeleteVolume`: a volume that is not attached goes, file and record.

use super::*;

/// `DeleteVolume`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DeleteVolumeRequest {
    pub volume_id: String,
}

impl Service {
    /// `DeleteVolume`: only a volume that is not attached.
    pub fn delete_volume(&mut self, caller: &Caller, req: DeleteVolumeRequest) -> Result<()> {
        check_volume_id(&req.volume_id)?;
        self.refresh_instances(caller)?;
        let _lock = object_lock::lock(&self.paths, &req.volume_id)?;
        let mut v = self.owned_volume(caller, &req.volume_id)?;
        if let Some(iid) = &v.instance_id {
            return Err(Error::new(
                ErrorCode::VolumeInUse,
                format!("Volume {} is currently attached to {iid}", v.volume_id),
            ));
        }
        if !matches!(
            v.state,
            VolumeStateName::Available | VolumeStateName::Deleting | VolumeStateName::Error
        ) {
            return Err(Error::new(
                ErrorCode::IncorrectState,
                format!("The volume '{}' is '{}'.", v.volume_id, v.state),
            ));
        }
        v.state = VolumeStateName::Deleting;
        self.store.write(|db| db.put_volume(&v))?;
        failpoint("delete-volume:intent")?;
        self.finish_volume_delete(&v.volume_id)
    }

    pub(super) fn finish_volume_delete(&mut self, volume_id: &str) -> Result<()> {
        for f in [
            self.paths.volume(volume_id),
            self.paths.volume_pending(volume_id),
        ] {
            match std::fs::remove_file(&f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(
                        Error::internal(format!("Cannot remove {}", f.display())).with_source(e)
                    )
                }
            }
        }
        failpoint("delete-volume:file")?;
        self.store.write(|db| db.delete_volume(volume_id))?;
        Ok(())
    }
}
