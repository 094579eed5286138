//! AMIs in regions bound to a remote backend: CreateImage as the backend's
//! snapshot of the server, the new AMI's state reconciled from the
//! backend's image, launch permissions mirrored as the backend's image
//! sharing, and DeregisterImage removing what amirun put there.
//!
//! - CreateImage records the pending AMI and its published-image row (no
//!   backend id yet) under the AMI's lock before the backend is asked; the
//!   snapshot is found again by its key after a crash. Without `NoReboot` a
//!   running instance is stopped for the snapshot and started again, as
//!   EC2 reboots for a consistent image.
//! - The AMI turns `available` (or `failed`) when a reader of the region's
//!   images sees the backend's image ready (or broken).
//! - Adding an account's launch permission shares the published image with
//!   that account's tenant (which accepts it); removing it unshares, unless
//!   another permitted account acts through the same tenant.

use super::*;
use crate::domain::ImageStateName;
use crate::service::baking::{CreateImageReport, CreateImageRequest, CreateImageResult};
use crate::store::{BlockDeviceMapping, EbsBlockDevice};

/// How long a stop or a snapshot of a server may take.
const SERVER_TASK_WITHIN: Duration = Duration::from_secs(300);

impl Service {
    /// `CreateImage` in a region on a backend.
    pub(in crate::service) fn remote_create_image(
        &mut self,
        caller: &Caller,
        backend: &dyn Backend,
        input: &CreateImageRequest,
    ) -> Result<CreateImageResult> {
        let started = Instant::now();
        let region = caller.region.clone();
        crate::service::images::check_name(&input.name)?;
        if !input.block_device_mappings.is_empty() {
            return Err(unsupported("BlockDeviceMapping in CreateImage", &region));
        }
        if input.flatten {
            return Err(unsupported("--flatten", &region));
        }
        let image_tags = crate::service::images::tags_for(&input.tag_specifications, "image")?;
        if !crate::service::images::tags_for(&input.tag_specifications, "snapshot")?.is_empty() {
            return Err(unsupported(
                "Tagging snapshots (the backend's image is the AMI's only data)",
                &region,
            ));
        }
        let id = input.instance_id.clone();
        check_instance_ids(std::slice::from_ref(&id))?;
        let _instance_lock = object_lock::lock(&self.paths, &id)?;
        let mut r = self
            .owned_remote(caller, backend, std::slice::from_ref(&id))?
            .remove(0);
        if r.root_device_type != RootDeviceType::Ebs {
            return Err(Error::new(
                ErrorCode::UnsupportedOperation,
                format!("The instance '{id}' is instance store-backed; CreateImage needs an EBS-backed instance"),
            ));
        }
        let server = match (&r.server_id, r.state) {
            (Some(s), InstanceStateName::Running | InstanceStateName::Stopped) => s.clone(),
            (_, s) => {
                return Err(Error::incorrect_instance_state(format!(
                    "The instance '{id}' is {s}; CreateImage needs it running or stopped"
                )))
            }
        };
        let reboot = r.state == InstanceStateName::Running && !input.no_reboot.unwrap_or(false);

        // Intent: the pending AMI and its row, under the AMI's lock.
        let image_id = ids::new_id(IdKind::Image);
        let _image_lock = object_lock::lock(&self.paths, &image_id)?;
        let image = ImageState {
            description: input.description.clone(),
            boot_mode: Some(r.boot_mode),
            root_device_name: r.root_device_name.clone(),
            state: ImageStateName::Pending,
            image_location: Some(format!("{}/{}", caller.account, input.name)),
            source_image_id: Some(r.image_id.clone()),
            source_image_region: Some(region.clone()),
            source_instance_id: Some(id.clone()),
            block_device_mappings: vec![BlockDeviceMapping {
                device_name: r.root_device_name.clone(),
                ebs: Some(EbsBlockDevice {
                    delete_on_termination: Some(true),
                    volume_size: Some(r.root_size_gib),
                    volume_type: Some("gp2".into()),
                    encrypted: Some(false),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..ImageState::private(
                &image_id,
                &region,
                &caller.account,
                &input.name,
                r.architecture,
                &now(),
            )
        };
        self.store.write(|db| -> Result<()> {
            crate::service::images::check_unique_name(db, caller, &input.name)?;
            db.put_image(&image)?;
            for (k, v) in &image_tags {
                db.put_tag(&image_id, k, v)?;
            }
            db.put_remote_image(&crate::store::RemoteImageState {
                image_id: image_id.clone(),
                region: region.clone(),
                backend_image_id: None,
                updated: now(),
            })?;
            Ok(())
        })?;
        failpoint("create-image:remote-recorded")?;
        let key = remote_image_key(&image_id, &region);
        let made = (|| -> Result<String> {
            if reboot {
                backend
                    .power(&server, PowerAction::Stop)
                    .map_err(backend_error)?;
                wait_server(backend, &server, "stopped", |s| {
                    s.power == ServerPower::Stopped && !s.busy
                })?;
            }
            let snapshot = backend.snapshot(&server, &key).map_err(backend_error)?;
            failpoint("create-image:remote-snapshot-started")?;
            self.store.write(|db| {
                db.put_remote_image(&crate::store::RemoteImageState {
                    image_id: image_id.clone(),
                    region: region.clone(),
                    backend_image_id: Some(snapshot.clone()),
                    updated: now(),
                })
            })?;
            Ok(snapshot)
        })();
        let restarted = if reboot {
            // Started again whatever happened, once the backend is done with it.
            wait_server(backend, &server, "idle", |s| !s.busy).and_then(|_| {
                backend
                    .power(&server, PowerAction::Start)
                    .map_err(backend_error)
            })
        } else {
            Ok(())
        };
        if reboot {
            r.state = InstanceStateName::Pending;
            r.updated = now();
            self.store.write(|db| db.put_remote_instance(&r))?;
        }
        if let Err(e) = made {
            // Nothing to show for it: no AMI (and no backend image) stays.
            if let Ok(left) = backend.find_images(&key) {
                for l in left {
                    let _ = backend.delete_image(&l.id);
                }
            }
            self.store.write(|db| -> Result<()> {
                db.delete_image(&image_id)?;
                db.delete_remote_image(&image_id, &region)?;
                for (k, _) in &image_tags {
                    db.delete_tag(&image_id, k, None)?;
                }
                Ok(())
            })?;
            return Err(e);
        }
        restarted?;
        Ok(CreateImageResult {
            image_id,
            report: CreateImageReport {
                mode: if reboot { "reboot" } else { "live" }.into(),
                seconds: started.elapsed().as_secs_f64(),
                pause_ms: None,
                guest_agent: None,
                snapshots: Vec::new(),
            },
        })
    }

    /// Settle the region's pending AMIs that a backend is making: available
    /// once its image is ready, failed when it broke or is gone. An AMI
    /// whose CreateImage still runs (it holds the lock) is left alone.
    pub(in crate::service) fn refresh_remote_images(&mut self, caller: &Caller) -> Result<()> {
        let region = caller.region.clone();
        let pending: Vec<ImageState> = self
            .store
            .read(|db| db.images_in_region(&region))?
            .into_iter()
            .filter(|i| i.state == ImageStateName::Pending)
            .collect();
        for mut image in pending {
            let Some(row) = self
                .store
                .read(|db| db.remote_image(&image.image_id, &region))?
            else {
                continue;
            };
            let Some(_lock) = object_lock::try_lock(&self.paths, &image.image_id)? else {
                continue;
            };
            let Some(owner) = self.backend_as(&region, Some(&image.owner_id))? else {
                continue;
            };
            let found = match &row.backend_image_id {
                Some(id) => owner.image(id).map_err(backend_error)?,
                // Its CreateImage died before it recorded the backend's id.
                None => owner
                    .find_images(&remote_image_key(&image.image_id, &region))
                    .map_err(backend_error)?
                    .into_iter()
                    .next(),
            };
            if let (Some(p), None) = (&found, &row.backend_image_id) {
                let adopted = crate::store::RemoteImageState {
                    backend_image_id: Some(p.id.clone()),
                    updated: now(),
                    ..row.clone()
                };
                self.store.write(|db| db.put_remote_image(&adopted))?;
            }
            let failure = match &found {
                Some(p) if p.ready => None,
                Some(p) => match &p.failed {
                    Some(why) => Some(format!(
                        "Server.InternalError: The backend's snapshot failed: {why}"
                    )),
                    // Still being made.
                    None => continue,
                },
                None => Some(
                    "Server.InternalError: The CreateImage stopped before the backend made a snapshot"
                        .to_string(),
                ),
            };
            match failure {
                None => image.state = ImageStateName::Available,
                Some(reason) => {
                    if let Some(p) = &found {
                        owner.delete_image(&p.id).map_err(backend_error)?;
                    }
                    image.state = ImageStateName::Failed;
                    image.state_reason = Some(reason);
                }
            }
            self.store.write(|db| db.put_image(&image))?;
        }
        Ok(())
    }

    /// DeregisterImage in a bound region: the AMI's image there goes too
    /// (the caller owns the AMI and holds nothing else of it).
    pub(in crate::service) fn remote_deregister(
        &mut self,
        caller: &Caller,
        image_id: &str,
    ) -> Result<()> {
        let Some(row) = self
            .store
            .read(|db| db.remote_image(image_id, &caller.region))?
        else {
            return Ok(());
        };
        let _lock = object_lock::lock(&self.paths, image_id)?;
        let Some(owner) = self.remote_backend(caller)? else {
            return Ok(());
        };
        let key = remote_image_key(image_id, &caller.region);
        let mut ids_: Vec<String> = row.backend_image_id.into_iter().collect();
        for left in owner.find_images(&key).map_err(backend_error)? {
            if !ids_.contains(&left.id) {
                ids_.push(left.id);
            }
        }
        for id in ids_ {
            owner.delete_image(&id).map_err(backend_error)?;
        }
        self.store
            .write(|db| db.delete_remote_image(image_id, &caller.region))?;
        Ok(())
    }

    /// Mirror a change of an AMI's launch permissions on its published
    /// image in the caller's (bound) region: `added` accounts' tenants
    /// become members that accept it, `removed` ones stop being members
    /// unless an account still permitted acts through the same tenant.
    pub(in crate::service) fn remote_share(
        &mut self,
        caller: &Caller,
        image: &ImageState,
        added: &[String],
        removed: &[String],
    ) -> Result<()> {
        let region = caller.region.clone();
        let Some(backend_image) = self
            .store
            .read(|db| db.remote_image(&image.image_id, &region))?
            .and_then(|r| r.backend_image_id)
        else {
            // Not published there yet: a launch shares it when it publishes.
            return Ok(());
        };
        let Some(owner) = self.remote_backend(caller)? else {
            return Ok(());
        };
        let still = self.store.read(|db| db.launch_users(&image.image_id))?;
        let changes = added
            .iter()
            .map(|a| (a, true))
            .chain(removed.iter().map(|a| (a, false)));
        for (account, add) in changes {
            if self.same_tenant(&region, &image.owner_id, account)
                || (!add && still.iter().any(|u| self.same_tenant(&region, u, account)))
            {
                continue;
            }
            let Some(member) = self.backend_as(&region, Some(account))? else {
                continue;
            };
            let tenant = member.tenant().map_err(backend_error)?;
            if add {
                owner
                    .share_image(&backend_image, &tenant)
                    .map_err(backend_error)?;
                member.accept_image(&backend_image).map_err(backend_error)?;
            } else {
                owner
                    .unshare_image(&backend_image, &tenant)
                    .map_err(backend_error)?;
            }
        }
        Ok(())
    }
}

/// Poll the backend until server `id` is as `done` says (`what`, for the error).
fn wait_server(
    backend: &dyn Backend,
    id: &str,
    what: &str,
    done: impl Fn(&ServerFacts) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + SERVER_TASK_WITHIN;
    loop {
        let servers = backend.servers().map_err(backend_error)?;
        match servers.iter().find(|s| s.id == id) {
            Some(s) if done(s) => return Ok(()),
            Some(s) if Instant::now() > deadline => {
                return Err(Error::internal(format!(
                    "Server {id} of {} was not {what} within {} s (it is {:?})",
                    backend.name(),
                    SERVER_TASK_WITHIN.as_secs(),
                    s.power
                )))
            }
            Some(_) => std::thread::sleep(Duration::from_millis(500)),
            None => {
                return Err(Error::internal(format!(
                    "Server {id} is gone from {}",
                    backend.name()
                )))
            }
        }
    }
}
