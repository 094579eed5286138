//! Making a guest bootable and starting its supervisor: the launch spec
//! (machine, disks, seed, metadata service, guest network) written for
//! `amirun __supervise`, then the supervisor spawned detached. Used by
//! launch and start.

use super::*;

/// A free TCP port on 127.0.0.1 not recorded for another instance.
pub(super) fn free_port(taken: &[u16]) -> Result<u16> {
    for _ in 0..32 {
        let l = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(io_error("Cannot find a free port on 127.0.0.1".into()))?;
        let p = l
            .local_addr()
            .map_err(io_error("Cannot read a port".into()))?
            .port();
        if !taken.contains(&p) {
            return Ok(p);
        }
    }
    Err(Error::new(
        ErrorCode::InsufficientInstanceCapacity,
        "No free port on 127.0.0.1 for the ssh forward",
    ))
}

impl Service {
    /// [`Self::prepare_boot_with`] the guest network its tags choose now.
    pub(super) fn prepare_boot(&mut self, i: &InstanceState, resume: bool) -> Result<()> {
        let tags = self.store.read(|db| db.tags_of(&i.instance_id))?;
        let outbound = guest_outbound(
            tags.iter().map(|t| (t.key.as_str(), t.value.as_str())),
            self.options.default_outbound,
        )?;
        self.prepare_boot_with(i, outbound, resume)
    }

    /// Create the per-boot files (instance-store disks, UEFI vars) and the
    /// launch spec; with `resume`, QEMU loads the saved hibernation state
    /// instead of booting ([`crate::service::hibernation`]).
    pub(super) fn prepare_boot_with(
        &mut self,
        i: &InstanceState,
        outbound: machine::Outbound,
        resume: bool,
    ) -> Result<()> {
        let arch = i.architecture.machine();
        let rdir = self.paths.instance_runtime_dir(&i.instance_id);
        std::fs::create_dir_all(&rdir)
            .map_err(io_error(format!("Cannot create {}", rdir.display())))?;
        let mut disks = Vec::new();
        let mut ephemeral = 0u32;
        for d in &i.devices {
            let path = match (&d.volume_id, d.virtual_name.as_deref()) {
                (Some(v), _) => self.paths.volume(v),
                (None, Some("root")) => self.paths.instance_store_root(&i.instance_id),
                (None, _) => {
                    let p = self.paths.ephemeral_disk(&i.instance_id, ephemeral);
                    ephemeral += 1;
                    if !p.exists() {
                        crate::disk::create_blank(&p, gib_to_bytes(d.size_gib)?)?;
                    }
                    p
                }
            };
            if !path.exists() {
                return Err(Error::internal(format!(
                    "Disk {} of {} is missing ({})",
                    d.device_name,
                    i.instance_id,
                    path.display()
                )));
            }
            disks.push(DiskSpec {
                path,
                format: DiskFormat::Qcow2,
                read_only: false,
                serial: Some(match &d.volume_id {
                    Some(v) => machine::volume_serial(v),
                    None => format!("AWS{}", d.virtual_name.as_deref().unwrap_or("ephemeral")),
                }),
            });
        }
        let image = self.store.read(|db| db.image(&i.image_id))?;
        let kernel = image.as_ref().and_then(|im| im.kernel_source.clone());
        let boot = if let Some(kernel) = kernel {
            // Direct kernel boot: the AMI names a kernel (and ramdisk); they
            // are stored byte for byte, never converted like disk images.
            let image = image.expect("kernel came from the image");
            let kernel = self.fetch_opaque(&kernel)?;
            let initrd = match &image.ramdisk_source {
                Some(r) => Some(self.fetch_opaque(r)?),
                None => None,
            };
            Boot::Kernel {
                kernel,
                initrd,
                cmdline: image
                    .kernel_cmdline
                    .clone()
                    .unwrap_or_else(|| format!("console={}", arch.console_device())),
            }
        } else if i.boot_mode == BootMode::LegacyBios {
            Boot::LegacyBios
        } else {
            let fw = machine::find_system_uefi_firmware(arch)?;
            let vars = self.paths.uefi_vars(&i.instance_id);
            machine::install_uefi_vars(&fw, &vars)?;
            Boot::Uefi {
                code: fw.code,
                vars,
            }
        };
        let itype = machine::instance_type(&i.instance_type).ok_or_else(|| {
            Error::invalid_value(format!(
                "Invalid value '{}' for InstanceType.",
                i.instance_type
            ))
        })?;
        let vpc = self.vpc_attachment_for_boot(&i.instance_id)?;
        let (mut imds, imds_forward) = self.imds_for_boot(i)?;
        let (outbound, guest_net, vpc_nic) = self.guest_network(i, outbound, vpc.as_ref())?;
        // IMDS must name the MAC the guest's NIC really has: cloud-init's Ec2
        // datasource configures only interfaces whose MAC IMDS lists. On the
        // VPC's network the NIC has the interface's; isolated, QEMU's default.
        if let Some(nic) = &vpc_nic {
            imds.mac = nic.mac.clone();
        }
        let spec = MachineSpec {
            instance_id: i.instance_id.clone(),
            arch,
            boot,
            accel: i.accel,
            vcpus: itype.vcpus,
            memory_mib: itype.memory_mib,
            disks,
            // No seed when launched with AMIRUN_NOCLOUD_SEED=0: IMDS only.
            seed: Some(self.paths.seed_image(&i.instance_id)).filter(|s| s.exists()),
            net: NetSpec {
                ssh_port: i.ssh_port,
                imds: Some(imds_forward),
                outbound,
                vpc_nic,
            },
            qmp_socket: self.paths.qmp_socket(&i.instance_id),
            serial_log: self.paths.serial_log(&i.instance_id),
            smbios: SmbiosIdentity::for_instance(&i.instance_id, &i.instance_type),
            tb_cache: self.options.tb_cache,
            free_pages: self.options.free_pages,
            incoming: resume,
        };
        let cmd = machine::qemu_command(&spec)?;
        let mut launch = LaunchSpec::new(
            &self.paths,
            &i.instance_id,
            PathBuf::from(cmd.program),
            cmd.args,
        );
        launch.stop_timeout_secs = self.options.stop_timeout_secs;
        launch.imds = Some(serde_json::to_value(&imds).expect("serializable"));
        launch.network = guest_net;
        launch.vpc = vpc;
        if crate::service::hibernation::configured(i) {
            launch = launch.with_hibernation(&self.paths, resume);
        }
        launch.write(&self.paths.launch_spec(&i.instance_id))?;
        Ok(())
    }

    /// The guest network for the next boot of `i`: outbound access needs a
    /// network namespace of the guest's own ([`network`]), made by its
    /// supervisor, which records how the leg came up; without one the guest
    /// is sealed instead, and the status file says why.
    ///
    /// A guest in a VPC joins the VPC's network instead (its supervisor
    /// plugs it in, [`network::vpc`]) where amirun has the privilege; where
    /// not, it runs isolated and the status file says why. A guest asked to
    /// have no outbound access (`amirun:outbound=none`, or
    /// `AMIRUN_GUEST_OUTBOUND=none`) stays isolated even in a VPC: the VPC's
    /// internet gateway is shared by its guests, so only isolation keeps
    /// that promise.
    pub(super) fn guest_network(
        &self,
        i: &InstanceState,
        wanted: machine::Outbound,
        vpc: Option<&network::VpcAttachment>,
    ) -> Result<(
        machine::Outbound,
        Option<network::GuestNetworkSpec>,
        Option<machine::VpcNic>,
    )> {
        let status_file = self.paths.network_status(&i.instance_id);
        let sealed = |why: String| -> Result<_> {
            NetworkStatus::new("none", why)
                .write(&status_file)
                .map_err(io_error(format!("write {}", status_file.display())))?;
            Ok((machine::Outbound::None, None, None))
        };
        if wanted == machine::Outbound::None {
            return sealed(format!(
                "Outbound access is off ({}=none, or AMIRUN_GUEST_OUTBOUND=none without the tag): isolated, IMDS and SSH only",
                machine::OUTBOUND_TAG
            ));
        }
        if let Some(att) = vpc {
            if let Err(why) = network::vpc::available() {
                return sealed(format!(
                    "Isolated instead of on the network of {}: {why}; the guest has IMDS and SSH only",
                    att.vpc_id
                ));
            }
            let _ = std::fs::remove_file(&status_file);
            return Ok((
                machine::Outbound::None,
                Some(network::GuestNetworkSpec {
                    resolv_conf: self.paths.guest_resolv_conf(&i.instance_id),
                    status_file: status_file.clone(),
                    ssh_port: i.ssh_port,
                    vpc_network: Some(self.paths.vpc_network(&att.vpc_id)),
                    imds_socket: Some(self.paths.imds_socket(&i.instance_id)),
                }),
                Some(machine::VpcNic {
                    mac: att.mac.clone(),
                }),
            ));
        }
        if let Err(why) = network::namespaces_available() {
            return sealed(format!(
                "Sealed instead of outbound access: {why}; the guest has IMDS and SSH only"
            ));
        }
        let _ = std::fs::remove_file(&status_file);
        Ok((
            machine::Outbound::Nat,
            Some(network::GuestNetworkSpec {
                resolv_conf: self.paths.guest_resolv_conf(&i.instance_id),
                status_file: status_file.clone(),
                ssh_port: i.ssh_port,
                vpc_network: None,
                imds_socket: None,
            }),
            None,
        ))
    }

    /// Fetch a kernel or ramdisk (a file, not a disk image) and return its path.
    pub(super) fn fetch_opaque(&mut self, source: &crate::store::SourceSpec) -> Result<PathBuf> {
        let source = crate::store::SourceSpec {
            format: Some(crate::blobs::OPAQUE_FORMAT.into()),
            ..source.clone()
        };
        Ok(self.fetch_source(&source)?.path)
    }

    /// Start an instance's supervisor and wait until it runs; the caller
    /// holds the instance's lock. `op` names the failpoint `<op>:spawned`.
    pub(super) fn spawn_supervisor(&self, instance_id: &str, op: &str) -> Result<u32> {
        let exe = (self.options.supervisor_exe.clone())
            .ok_or_else(|| Error::internal("Cannot find the amirun executable"))?;
        let pid = supervisor::spawn_detached(&exe, &self.paths.launch_spec(instance_id))?;
        failpoint(&format!("{op}:spawned"))?;
        // The supervisor writes its pid file once it is up; until then the
        // instance would look dead to reconciliation. Wait for a live fact.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let live = supervisor::probe(&self.paths, instance_id);
            if live.supervisor_alive || live.last_exit.is_some() {
                return Ok(pid);
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::internal(format!(
                    "The supervisor of {instance_id} did not start within 20 s (see {})",
                    self.paths.supervisor_log(instance_id).display()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
