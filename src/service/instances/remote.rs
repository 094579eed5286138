//! Instances of regions bound to a remote backend ([`crate::backend`]):
//! RunInstances, DescribeInstances, Stop/Start/Reboot/TerminateInstances
//! and GetConsoleOutput with EC2's ids, rules and errors, on servers the
//! backend runs. Each of those service methods asks [`Service::remote_backend`]
//! first and comes here for a bound region; local regions never do.
//!
//! Each account acts in the backend through its own tenant when the
//! region's binding gives it one ([`Service::backend_as`]); the backend's
//! lists are per tenant, so each reader reconciles only its tenant's
//! instances. AMIs there (CreateImage, sharing, deregistering) are the
//! [`images`] room's.
//!
//! - An AMI is published to the backend on its first launch there, in the
//!   tenant of its owner (shared with the launching account's tenant when
//!   that is another): its root
//!   disk made local as for a local launch, flattened by `disk` (backends
//!   refuse backing files), uploaded. The AMI's object lock is held while
//!   publishing; a row without the backend's id means an upload was
//!   interrupted: its leftovers (found by the image's key) are adopted when
//!   complete, else removed, before publishing again.
//! - A launch records its instances (`pending`, no server id) under their
//!   locks before the backend is asked, then binds each to its server by
//!   the launch group and index. A launch whose process died is settled by
//!   the next reader once its locks are free: bound when the backend has
//!   the server, `terminated` (`Server.InternalError`) when it has not.
//! - States come from the backend on every read ([`state_of`]); a server
//!   that is gone is `terminated`.
//!
//! What a region on a backend does not offer yet (VPC networking, extra
//! block device mappings, hibernation, `terminate` on shutdown, direct
//! kernel boot) is refused with `UnsupportedOperation`, never dropped.

use super::*;
use crate::backend::{
    self, Backend, Firmware, ImageSpec, LaunchSpec, MachineSize, PowerAction, RegionBindings,
    ServerFacts, ServerPower,
};
use crate::store::{RemoteImageState, RemoteInstanceState};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod images;

/// How long a launch waits for the backend to list the servers it took.
const BIND_WITHIN: Duration = Duration::from_secs(120);

/// The bound regions (their connections are kept by [`crate::backend`]).
#[derive(Default)]
pub(crate) struct RemoteRegions {
    bindings: RegionBindings,
}

impl RemoteRegions {
    /// The bindings of `$AMIRUN_HOME/regions.d`.
    pub(crate) fn load(paths: &crate::paths::Paths) -> Result<RemoteRegions> {
        let bindings = RegionBindings::load(&paths.regions_dir())
            .map_err(|e| Error::invalid_value(e.to_string()))?;
        Ok(RemoteRegions { bindings })
    }
}

/// EC2's state for a server's power, given the state amirun recorded.
pub(super) fn state_of(power: &ServerPower, recorded: InstanceStateName) -> InstanceStateName {
    use InstanceStateName as S;
    match power {
        ServerPower::Building | ServerPower::PoweringOn => S::Pending,
        ServerPower::Running | ServerPower::Rebooting => S::Running,
        ServerPower::PoweringOff => S::Stopping,
        ServerPower::Stopped => S::Stopped,
        ServerPower::Deleting => S::ShuttingDown,
        ServerPower::Deleted => S::Terminated,
        ServerPower::Failed(_) if recorded == S::Pending => S::Terminated,
        ServerPower::Failed(_) => S::Stopped,
    }
}

/// The backend's error, its message first and the cloud's answer as the cause.
fn backend_error(e: backend::BackendError) -> Error {
    let message = e.to_string();
    match e {
        backend::BackendError::Refused { source, .. }
        | backend::BackendError::Failed { source, .. } => {
            Error::internal(message).with_source(source)
        }
        other => Error::internal(message).with_source(other),
    }
}

fn unsupported(what: &str, region: &str) -> Error {
    Error::new(
        ErrorCode::UnsupportedOperation,
        format!("{what} is not supported in region {region}, whose instances run on a remote backend; leave it out"),
    )
}

/// The name an AMI's image has in a region's backend (found again by it).
fn remote_image_key(image_id: &str, region: &str) -> String {
    format!("amirun-{image_id}-{region}")
}

/// An AMI the backend made (by CreateImage in a bound region) has no local
/// data: its root size is in its mapping. None for every other AMI.
fn made_remotely(image: &ImageState) -> Option<u64> {
    if image.root_source.is_some() || !image.snapshot_ids().is_empty() {
        return None;
    }
    image
        .block_device_mappings
        .iter()
        .find(|m| m.device_name == image.root_device_name)
        .and_then(|m| m.ebs.as_ref())
        .and_then(|e| e.volume_size)
}

/// A Nova-safe key pair name for an account's EC2 key pair.
fn backend_key_name(account: &str, key_name: &str) -> String {
    let safe: String = key_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("amirun-{account}-{safe}")
}

impl Service {
    /// The backend of the caller's region, connected on first use; None
    /// when the region runs on this machine.
    pub(in crate::service) fn remote_backend(
        &mut self,
        caller: &Caller,
    ) -> Result<Option<Arc<dyn Backend>>> {
        self.backend_as(&caller.region, Some(&caller.account.to_string()))
    }

    /// The backend of `region` as `account` acts there (None: as the
    /// region's own cloud entry); None when the region is local.
    pub(in crate::service) fn backend_as(
        &mut self,
        region: &str,
        account: Option<&str>,
    ) -> Result<Option<Arc<dyn Backend>>> {
        match self.remote.bindings.get(region) {
            Some(binding) => Ok(Some(binding.connect(account).map_err(backend_error)?)),
            None => Ok(None),
        }
    }

    /// Whether two accounts act through the same cloud entry in `region`.
    pub(in crate::service) fn same_tenant(&self, region: &str, a: &str, b: &str) -> bool {
        self.remote
            .bindings
            .get(region)
            .is_none_or(|r| r.cloud_of(Some(a)) == r.cloud_of(Some(b)))
    }

    /// True when `region` runs on a remote backend.
    pub fn is_remote_region(&self, region: &str) -> bool {
        self.remote.bindings.get(region).is_some()
    }

    /// The backend's image of an AMI in the caller's region, published
    /// first if needed (in the tenant of the AMI's owner, shared with the
    /// caller's when that is another); and the AMI's root disk size in GiB.
    fn published_image(
        &mut self,
        caller: &Caller,
        backend: &dyn Backend,
        image: &ImageState,
    ) -> Result<(String, u64)> {
        let _lock = object_lock::lock(&self.paths, &image.image_id)?;
        let owner = self
            .backend_as(&caller.region, Some(&image.owner_id))?
            .ok_or_else(|| Error::internal(format!("Region {} is not bound", caller.region)))?;
        let (id, root_gib) = self.publish_as(caller, &*owner, image)?;
        if !self.same_tenant(&caller.region, &image.owner_id, &caller.account.to_string()) {
            let tenant = backend.tenant().map_err(backend_error)?;
            owner.share_image(&id, &tenant).map_err(backend_error)?;
            backend.accept_image(&id).map_err(backend_error)?;
        }
        Ok((id, root_gib))
    }

    /// Publish an AMI's root disk through `publisher` unless it is already
    /// (the caller holds the AMI's lock).
    fn publish_as(
        &mut self,
        caller: &Caller,
        publisher: &dyn Backend,
        image: &ImageState,
    ) -> Result<(String, u64)> {
        let key = remote_image_key(&image.image_id, &caller.region);
        let row = self
            .store
            .read(|db| db.remote_image(&image.image_id, &caller.region))?;
        if let (Some(id), Some(gib)) = (
            row.as_ref().and_then(|r| r.backend_image_id.clone()),
            made_remotely(image),
        ) {
            // An AMI the backend made (CreateImage there): no local data.
            return Ok((id, gib));
        }
        let fetched = self.fetch_image(caller, &image.image_id)?;
        let root = fetched
            .iter()
            .find(|d| d.device_name == image.root_device_name)
            .or_else(|| fetched.iter().find(|d| d.snapshot_id.is_none()))
            .ok_or_else(|| {
                Error::internal(format!("Image {} has no root disk data", image.image_id))
            })?;
        let root_gib = root.virtual_size.div_ceil(1 << 30).max(1);
        if let Some(id) = row.as_ref().and_then(|r| r.backend_image_id.clone()) {
            // Published, unless someone removed it from the cloud since:
            // then it is published again.
            match publisher.image(&id).map_err(backend_error)? {
                Some(p) if p.failed.is_none() => return Ok((id, root_gib)),
                _ => {}
            }
        }
        if row.is_some() {
            // An upload was interrupted (we hold the lock: its writer is gone).
            for left in publisher.find_images(&key).map_err(backend_error)? {
                if left.ready {
                    self.record_published(image, &caller.region, Some(left.id.clone()))?;
                    return Ok((left.id, root_gib));
                }
                publisher.delete_image(&left.id).map_err(backend_error)?;
            }
        }
        // Intent first: a killed upload leaves this row for the next launch.
        self.record_published(image, &caller.region, None)?;
        let file = self.paths.publish_file(&image.image_id, &caller.region);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)
                .map_err(io_error(format!("Cannot create {}", dir.display())))?;
        }
        crate::disk::convert(std::path::Path::new(&root.path), None, &file, "qcow2")?;
        let published = publisher.publish_image(&ImageSpec {
            key: key.clone(),
            file: file.clone(),
            architecture: match image.architecture {
                crate::domain::Architecture::Arm64 => "aarch64".into(),
                a => a.to_string(),
            },
            firmware: match image.boot_mode {
                Some(BootMode::Uefi) => Firmware::Uefi,
                _ => Firmware::Bios,
            },
        });
        let _ = std::fs::remove_file(&file);
        let id = match published {
            Ok(id) => id,
            Err(e) => {
                // Remove what the failed upload left; the row stays for the next try.
                if let Ok(left) = publisher.find_images(&key) {
                    for l in left {
                        let _ = publisher.delete_image(&l.id);
                    }
                }
                return Err(backend_error(e));
            }
        };
        self.record_published(image, &caller.region, Some(id.clone()))?;
        Ok((id, root_gib))
    }

    fn record_published(
        &mut self,
        image: &ImageState,
        region: &str,
        backend_image_id: Option<String>,
    ) -> Result<()> {
        let row = RemoteImageState {
            image_id: image.image_id.clone(),
            region: region.to_string(),
            backend_image_id,
            updated: now(),
        };
        Ok(self.store.write(|db| db.put_remote_image(&row))?)
    }

    /// `RunInstances` in a region on a backend.
    pub(super) fn remote_run_instances(
        &mut self,
        caller: &Caller,
        backend: &dyn Backend,
        input: &RunInstancesRequest,
    ) -> Result<Reservation> {
        let region = caller.region.as_str();
        let reservation_id = match &input.client_token {
            Some(token) => {
                let id = crate::service::client_token_id(IdKind::Reservation, caller, token)?;
                let made: Vec<String> = self
                    .store
                    .read(|db| db.remote_instances_in_region(region))?
                    .into_iter()
                    .filter(|i| i.reservation_id == id && i.owner_id == caller.account)
                    .map(|i| i.instance_id)
                    .collect();
                if !made.is_empty() {
                    return self.remote_reservation(caller, backend, &id, made);
                }
                id
            }
            None => ids::new_id(IdKind::Reservation),
        };
        // An AMI the backend is still making may be ready by now.
        self.refresh_remote_images(caller)?;
        // Everything is checked before anything is made.
        let super::launch::LaunchBasics {
            image,
            type_name,
            itype,
            count,
        } = self.check_launch_basics(caller, input)?;
        let refused: [(bool, &str); 11] = [
            (
                !input.block_device_mappings.is_empty(),
                "BlockDeviceMapping",
            ),
            (!input.security_group_ids.is_empty(), "SecurityGroupId"),
            (!input.security_groups.is_empty(), "SecurityGroup"),
            (input.subnet_id.is_some(), "SubnetId"),
            (input.private_ip_address.is_some(), "PrivateIpAddress"),
            (!input.network_interfaces.is_empty(), "NetworkInterface"),
            (input.hibernation_options.is_some(), "HibernationOptions"),
            (input.ebs_optimized == Some(true), "EbsOptimized=true"),
            (
                input.monitoring.as_ref().is_some_and(|m| m.enabled),
                "Monitoring.Enabled=true",
            ),
            (
                input.disable_api_termination == Some(true),
                "DisableApiTermination=true",
            ),
            (
                input.instance_initiated_shutdown_behavior == Some(ShutdownBehavior::Terminate),
                "InstanceInitiatedShutdownBehavior=terminate",
            ),
        ];
        if let Some((_, what)) = refused.iter().find(|(r, _)| *r) {
            return Err(unsupported(what, region));
        }
        if let Some(p) = &input.iam_instance_profile {
            if p.arn.as_deref().is_some_and(|s| !s.is_empty())
                || p.name.as_deref().is_some_and(|s| !s.is_empty())
            {
                return Err(unsupported("IamInstanceProfile", region));
            }
        }
        if image.kernel_source.is_some() {
            return Err(unsupported(
                "Launching an AMI with its own kernel (direct kernel boot)",
                region,
            ));
        }
        let zone = match &input.placement {
            Some(p) => {
                if p.tenancy
                    .as_deref()
                    .is_some_and(|t| !t.is_empty() && t != "default")
                {
                    return Err(unsupported("A tenancy other than default", region));
                }
                p.availability_zone.clone().filter(|z| !z.is_empty())
            }
            None => None,
        };
        let key = match &input.key_name {
            Some(k) => Some((
                backend_key_name(&caller.account.to_string(), k),
                self.key_pair(caller, k)?.public_key,
            )),
            None => None,
        };
        let tags = crate::service::images::tags_for(&input.tag_specifications, "instance")?;
        let (backend_image, root_gib) = self.published_image(caller, backend, &image)?;
        // Sizes are defined by the region's own cloud entry (an account's
        // may not have the rights); the launch then finds it.
        let size = MachineSize {
            name: type_name.clone(),
            vcpus: itype.vcpus,
            memory_mib: itype.memory_mib,
            disk_gib: root_gib,
        };
        if let Some(region_backend) = self.backend_as(region, None)? {
            region_backend.prepare_size(&size).map_err(backend_error)?;
        }

        // Intent: the records, under their locks, before the backend is asked.
        let group = format!("amirun-{reservation_id}");
        let launch_time = now();
        let mut locks = Vec::new();
        let mut rows = Vec::new();
        for index in 0..count {
            let instance_id = ids::new_id(IdKind::Instance);
            locks.push(object_lock::lock(&self.paths, &instance_id)?);
            rows.push(RemoteInstanceState {
                instance_id,
                region: region.to_string(),
                owner_id: caller.account.to_string(),
                reservation_id: reservation_id.clone(),
                image_id: image.image_id.clone(),
                instance_type: type_name.clone(),
                architecture: image.architecture,
                boot_mode: image.boot_mode.unwrap_or(BootMode::LegacyBios),
                root_device_type: image.root_device_type,
                root_device_name: image.root_device_name.clone(),
                root_size_gib: root_gib,
                launch_index: index,
                launch_time: launch_time.clone(),
                key_name: input.key_name.clone(),
                group: group.clone(),
                server_id: None,
                host: None,
                zone: zone.clone(),
                state: InstanceStateName::Pending,
                state_reason: None,
                updated: launch_time.clone(),
            });
        }
        self.store.write(|db| -> Result<()> {
            for r in &rows {
                db.put_remote_instance(r)?;
                for (k, v) in &tags {
                    db.put_tag(&r.instance_id, k, v)?;
                }
            }
            Ok(())
        })?;
        failpoint("run-instances:remote-recorded")?;
        let launched = backend.launch(&LaunchSpec {
            group: group.clone(),
            image_id: backend_image,
            size,
            count,
            user_data: input.user_data.as_ref().map(|u| u.bytes().to_vec()),
            key,
            zone,
        });
        if let Err(e) = launched {
            if e.is_refusal() {
                // The backend made nothing: neither are there instances.
                self.store.write(|db| -> Result<()> {
                    for r in &rows {
                        db.delete_remote_instance(&r.instance_id)?;
                        for (k, _) in &tags {
                            db.delete_tag(&r.instance_id, k, None)?;
                        }
                    }
                    Ok(())
                })?;
            }
            // Otherwise the records stay; readers settle them once the locks are free.
            return Err(backend_error(e));
        }
        failpoint("run-instances:remote-launched")?;
        // Bind each record to its server.
        let deadline = Instant::now() + BIND_WITHIN;
        loop {
            let servers = backend.servers().map_err(backend_error)?;
            let mine: Vec<&ServerFacts> = servers.iter().filter(|s| s.group == group).collect();
            if mine.len() as u32 >= count || Instant::now() > deadline {
                for r in rows.iter_mut() {
                    if let Some(s) = server_for(r, &mine, count) {
                        bind(r, s);
                    }
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        self.store.write(|db| -> Result<()> {
            for r in &rows {
                db.put_remote_instance(r)?;
            }
            Ok(())
        })?;
        drop(locks);
        let ids_: Vec<String> = rows.into_iter().map(|r| r.instance_id).collect();
        self.remote_reservation(caller, backend, &reservation_id, ids_)
    }

    fn remote_reservation(
        &mut self,
        caller: &Caller,
        backend: &dyn Backend,
        reservation_id: &str,
        instance_ids: Vec<String>,
    ) -> Result<Reservation> {
        let shown = self.remote_describe_instances(
            caller,
            backend,
            &DescribeInstancesRequest {
                instance_ids,
                ..Default::default()
            },
        )?;
        shown
            .reservations
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal(format!("Reservation {reservation_id} is not shown")))
    }

    /// Reconcile the region's remote instances of the caller's tenant with
    /// the backend's servers (it lists only that tenant's).
    fn refresh_remote(&mut self, caller: &Caller, backend: &dyn Backend) -> Result<()> {
        let account = caller.account.to_string();
        let rows: Vec<RemoteInstanceState> = self
            .store
            .read(|db| db.remote_instances_in_region(&caller.region))?
            .into_iter()
            .filter(|r| self.same_tenant(&caller.region, &r.owner_id, &account))
            .collect();
        if rows
            .iter()
            .all(|r| r.state == InstanceStateName::Terminated)
        {
            return Ok(());
        }
        let servers = backend.servers().map_err(backend_error)?;
        let mut group_sizes: BTreeMap<String, u32> = BTreeMap::new();
        for r in &rows {
            *group_sizes.entry(r.group.clone()).or_default() += 1;
        }
        let mut changed = Vec::new();
        for mut r in rows {
            if r.state == InstanceStateName::Terminated {
                continue;
            }
            // A launch or change in progress holds the lock: leave it as recorded.
            let Some(_lock) = object_lock::try_lock(&self.paths, &r.instance_id)? else {
                continue;
            };
            let before = r.clone();
            match r.server_id.clone() {
                None => {
                    let group: Vec<&ServerFacts> =
                        servers.iter().filter(|s| s.group == r.group).collect();
                    let count = group_sizes.get(&r.group).copied().unwrap_or(1);
                    match server_for(&r, &group, count) {
                        Some(s) => bind(&mut r, s),
                        None => {
                            r.state = InstanceStateName::Terminated;
                            r.state_reason = Some(
                                "Server.InternalError: The launch was interrupted before the instance booted; launch it again".into(),
                            );
                        }
                    }
                }
                Some(id) => match servers.iter().find(|s| s.id == id) {
                    Some(s) => {
                        if let ServerPower::Failed(why) = &s.power {
                            r.state_reason = Some(format!("Server.InternalError: {why}"));
                            if r.state == InstanceStateName::Pending {
                                // A launch the backend could not complete: nothing stays behind.
                                backend
                                    .power(&id, PowerAction::Delete)
                                    .map_err(backend_error)?;
                            }
                        }
                        r.state = state_of(&s.power, r.state);
                        r.host = s.host.clone().or(r.host);
                        r.zone = s.zone.clone().or(r.zone);
                    }
                    None => {
                        if r.state_reason.is_none() {
                            r.state_reason = Some(
                                "Server.InternalError: The server is gone from the backend".into(),
                            );
                        }
                        r.state = InstanceStateName::Terminated;
                    }
                },
            }
            if r != before {
                r.updated = now();
                changed.push(r);
            }
        }
        if !changed.is_empty() {
            self.store.write(|db| -> Result<()> {
                for r in &changed {
                    db.put_remote_instance(r)?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// The caller's remote instances with these ids, reconciled, or
    /// `InvalidInstanceID.NotFound`.
    fn owned_remote(
        &mut self,
        caller: &Caller,
        backend: &dyn Backend,
        ids_: &[String],
    ) -> Result<Vec<RemoteInstanceState>> {
        check_instance_ids(ids_)?;
        self.refresh_remote(caller, backend)?;
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for id in ids_ {
            match self.store.read(|db| db.remote_instance(id))? {
                Some(i) if i.region == caller.region && i.owner_id == caller.account => out.push(i),
                _ => missing.push(id.clone()),
            }
        }
        super::instances_missing(&missing)?;
        Ok(out)
    }

    /// `DescribeInstances` in a region on a backend.
    pub(super) fn remote_describe_instances(
        &mut self,
        caller: &Caller,
        backend: &dyn Backend,
        input: &DescribeInstancesRequest,
    ) -> Result<DescribeInstancesResult> {
        super::describe::check_paging(input)?;
        filter::check_names(&input.filters, super::describe::INSTANCE_FILTERS)?;
        let wanted: Vec<RemoteInstanceState> = if input.instance_ids.is_empty() {
            self.refresh_remote(caller, backend)?;
            self.store
                .read(|db| db.remote_instances_in_region(&caller.region))?
                .into_iter()
                .filter(|i| i.owner_id == caller.account)
                .collect()
        } else {
            self.owned_remote(caller, backend, &input.instance_ids)?
        };
        let mut selected: Vec<(String, Instance)> = Vec::new();
        for r in wanted {
            let tags = self.store.read(|db| db.tags_of(&r.instance_id))?;
            // The same filter answers as locally: from the instance as shown.
            let shape = self.render_remote(&r, &tags, backend)?;
            let shown = serde_json::to_value(&shape).expect("instances serialize");
            let keep = filter::matches(&input.filters, |n| {
                filter::tag_values(&tags, n).unwrap_or_else(|| {
                    super::describe::shown_values(&shown, &r.owner_id, &r.reservation_id, n)
                })
            });
            if !keep {
                continue;
            }
            selected.push((r.reservation_id.clone(), shape));
        }
        super::describe::paged_reservations(caller, selected, input)
    }

    /// EC2's shape of a remote instance: the local rendering of the same
    /// facts, with where it runs in place of the local engine's facts.
    fn render_remote(
        &self,
        r: &RemoteInstanceState,
        tags: &[crate::store::TagState],
        backend: &dyn Backend,
    ) -> Result<Instance> {
        let state = InstanceState {
            instance_id: r.instance_id.clone(),
            region: r.region.clone(),
            owner_id: r.owner_id.clone(),
            reservation_id: r.reservation_id.clone(),
            image_id: r.image_id.clone(),
            instance_type: r.instance_type.clone(),
            architecture: r.architecture,
            boot_mode: r.boot_mode,
            root_device_type: r.root_device_type,
            root_device_name: r.root_device_name.clone(),
            state: r.state,
            state_reason: r.state_reason.clone(),
            state_transition_reason: None,
            launch_time: r.launch_time.clone(),
            key_name: r.key_name.clone(),
            user_data: None,
            shutdown_behavior: ShutdownBehavior::Stop,
            accel: crate::domain::Accel::Tcg,
            accel_reason: format!(
                "runs on {}{}",
                backend.name(),
                r.host
                    .as_deref()
                    .map(|h| format!(", host {h}"))
                    .unwrap_or_default()
            ),
            ssh_port: None,
            imds_port: None,
            launch_index: r.launch_index,
            metadata_options: metadata_options(None)?,
            hibernation: Value::Null,
            devices: Vec::new(),
            updated: r.updated.clone(),
        };
        let mut shape = self.render_instance(&state, tags);
        shape.placement.availability_zone = r.zone.clone().unwrap_or_default();
        shape.private_dns_name = String::new();
        shape.private_ip_address = String::new();
        shape.amirun.guest_outbound = "backend".into();
        shape.amirun.console_log = match &r.server_id {
            Some(id) => format!("console log of server {id} ({})", backend.name()),
            None => String::new(),
        };
        Ok(shape)
    }

    /// Stop, start, reboot or terminate instances in a region on a
    /// backend, EC2's rules checked for every instance first.
    pub(super) fn remote_change(
        &mut self,
        caller: &Caller,
        backend: &dyn Backend,
        instance_ids: &[String],
        action: PowerAction,
    ) -> Result<Vec<StateChange>> {
        use InstanceStateName as S;
        check_instance_ids(instance_ids)?;
        let mut locks = Vec::new();
        for id in instance_ids {
            locks.push(object_lock::lock(&self.paths, id)?);
        }
        let rows = self.owned_remote(caller, backend, instance_ids)?;
        for r in &rows {
            let id = &r.instance_id;
            match action {
                PowerAction::Stop => {
                    if r.root_device_type == RootDeviceType::InstanceStore {
                        return Err(Error::new(
                            ErrorCode::UnsupportedOperation,
                            format!("The instance '{id}' does not have an 'ebs' root device type and cannot be stopped."),
                        ));
                    }
                    if matches!(r.state, S::Pending | S::ShuttingDown | S::Terminated) {
                        return Err(Error::incorrect_instance_state(format!(
                            "The instance '{id}' is not in a state from which it can be stopped."
                        )));
                    }
                }
                PowerAction::Start => {
                    if matches!(r.state, S::Stopping | S::ShuttingDown | S::Terminated) {
                        return Err(Error::incorrect_instance_state(format!(
                            "The instance '{id}' is not in a state from which it can be started."
                        )));
                    }
                }
                PowerAction::Reboot => {
                    if r.state != S::Running && r.state != S::Pending {
                        return Err(Error::incorrect_instance_state(format!(
                            "The instance '{id}' is not running."
                        )));
                    }
                }
                PowerAction::Delete => {}
            }
        }
        let mut changes = Vec::new();
        for mut r in rows {
            let previous = r.state;
            let next = match (action, previous) {
                (PowerAction::Stop, S::Running) => Some(S::Stopping),
                (PowerAction::Start, S::Stopped) => Some(S::Pending),
                (PowerAction::Reboot, S::Running) => Some(S::Running),
                (PowerAction::Delete, S::Terminated | S::ShuttingDown) => None,
                (PowerAction::Delete, _) => Some(S::ShuttingDown),
                _ => None,
            };
            if let Some(next) = next {
                // (A launch that never reached the backend has no server to ask.)
                if let Some(server) = &r.server_id {
                    backend.power(server, action).map_err(backend_error)?;
                }
                r.state = if action == PowerAction::Delete && r.server_id.is_none() {
                    S::Terminated
                } else {
                    next
                };
                if matches!(action, PowerAction::Stop | PowerAction::Delete) {
                    r.state_reason =
                        Some("Client.UserInitiatedShutdown: User initiated shutdown".into());
                }
                r.updated = now();
                let row = r.clone();
                self.store.write(|db| db.put_remote_instance(&row))?;
            }
            changes.push(StateChange {
                current_state: InstanceStateShape::of(r.state),
                instance_id: r.instance_id.clone(),
                previous_state: InstanceStateShape::of(previous),
            });
        }
        Ok(changes)
    }

    /// `GetConsoleOutput` in a region on a backend: the server's console log.
    pub(super) fn remote_console_output(
        &mut self,
        caller: &Caller,
        backend: &dyn Backend,
        input: &GetConsoleOutputRequest,
    ) -> Result<GetConsoleOutputResult> {
        let r = self
            .owned_remote(caller, backend, std::slice::from_ref(&input.instance_id))?
            .remove(0);
        let log = match (&r.server_id, r.state) {
            (Some(id), s) if s != InstanceStateName::Terminated => {
                backend.console(id).map_err(backend_error)?
            }
            _ => String::new(),
        };
        let bytes = log.into_bytes();
        let tail = if input.latest.unwrap_or(false) && bytes.len() > 64 * 1024 {
            bytes[bytes.len() - 64 * 1024..].to_vec()
        } else {
            bytes
        };
        Ok(GetConsoleOutputResult {
            instance_id: r.instance_id,
            timestamp: now(),
            output: Base64Blob(tail),
        })
    }
}

/// The server of a launch group that stands for record `r` (by its index;
/// a one-server group's index may be unknown).
fn server_for<'a>(
    r: &RemoteInstanceState,
    group: &[&'a ServerFacts],
    count: u32,
) -> Option<&'a ServerFacts> {
    group
        .iter()
        .find(|s| s.index == Some(r.launch_index))
        .or_else(|| (count == 1 && group.len() == 1).then(|| &group[0]))
        .copied()
}

fn bind(r: &mut RemoteInstanceState, s: &ServerFacts) {
    r.server_id = Some(s.id.clone());
    r.host = s.host.clone();
    r.zone = s.zone.clone().or(r.zone.take());
    r.state = state_of(&s.power, r.state);
    if let ServerPower::Failed(why) = &s.power {
        r.state_reason = Some(format!("Server.InternalError: {why}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_power_maps_to_ec2_states() {
        use InstanceStateName as S;
        for (power, recorded, want) in [
            (ServerPower::Building, S::Pending, S::Pending),
            (ServerPower::Running, S::Pending, S::Running),
            (ServerPower::PoweringOff, S::Running, S::Stopping),
            (ServerPower::Stopped, S::Stopping, S::Stopped),
            (ServerPower::PoweringOn, S::Stopped, S::Pending),
            (ServerPower::Rebooting, S::Running, S::Running),
            (ServerPower::Deleting, S::Running, S::ShuttingDown),
            (ServerPower::Deleted, S::ShuttingDown, S::Terminated),
            (ServerPower::Failed("x".into()), S::Pending, S::Terminated),
            (ServerPower::Failed("x".into()), S::Running, S::Stopped),
        ] {
            assert_eq!(
                state_of(&power, recorded),
                want,
                "{power:?} from {recorded}"
            );
        }
    }

    #[test]
    fn servers_are_found_by_launch_index() {
        let facts = |id: &str, index: Option<u32>| ServerFacts {
            id: id.into(),
            group: "g".into(),
            index,
            power: ServerPower::Building,
            host: None,
            zone: None,
            busy: false,
        };
        let (a, b) = (facts("a", Some(0)), facts("b", Some(1)));
        let mut r = RemoteInstanceState {
            instance_id: "i-1".into(),
            region: "eu-west-1".into(),
            owner_id: "000000000000".into(),
            reservation_id: "r-1".into(),
            image_id: "ami-1".into(),
            instance_type: "t3.micro".into(),
            architecture: crate::domain::Architecture::X86_64,
            boot_mode: BootMode::LegacyBios,
            root_device_type: RootDeviceType::Ebs,
            root_device_name: "/dev/xvda".into(),
            root_size_gib: 1,
            launch_index: 1,
            launch_time: "t".into(),
            key_name: None,
            group: "g".into(),
            server_id: None,
            host: None,
            zone: None,
            state: InstanceStateName::Pending,
            state_reason: None,
            updated: "t".into(),
        };
        assert_eq!(server_for(&r, &[&a, &b], 2).map(|s| &s.id[..]), Some("b"));
        r.launch_index = 0;
        let lone = facts("c", None);
        assert_eq!(server_for(&r, &[&lone], 1).map(|s| &s.id[..]), Some("c"));
        assert_eq!(server_for(&r, &[&lone], 2), None);
        assert_eq!(
            backend_key_name("000000000000", "my key"),
            "amirun-000000000000-my_key"
        );
    }
}
