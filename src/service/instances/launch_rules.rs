//! EC2's launch rules as pure functions: instance counts, EBS volume sizes
//! per type, block device mappings merged onto the AMI's, boot mode,
//! placement and metadata options. Table-tested here; applied by
//! [`super::launch`] before anything is made.

use super::*;

/// The most instances one request launches (EC2 launches up to MaxCount
/// within the account's quota; this is amirun's quota).
pub(super) const LAUNCH_LIMIT: u32 = 64;

/// EC2's MinCount/MaxCount rules: both at least 1, MinCount at most
/// MaxCount. Returns how many instances to launch: MaxCount, or as many as
/// the quota allows when that is still at least MinCount.
pub(super) fn launch_count(min: u32, max: u32) -> Result<u32> {
    if min == 0 {
        return Err(Error::invalid_value(
            "Minimum instance count must be greater than zero",
        ));
    }
    if max == 0 {
        return Err(Error::invalid_value(
            "Maximum instance count must be greater than zero",
        ));
    }
    if min > max {
        return Err(Error::invalid_value(format!(
            "Minimum instance count ({min}) must be less than or equal to maximum instance count ({max})"
        )));
    }
    if min > LAUNCH_LIMIT {
        return Err(Error::new(
            ErrorCode::InstanceLimitExceeded,
            format!(
                "You have requested more instances ({min}) than your current instance limit of {LAUNCH_LIMIT} allows; ask for at most {LAUNCH_LIMIT}"
            ),
        ));
    }
    Ok(max.min(LAUNCH_LIMIT))
}

/// EC2's size limits, in GiB, of each EBS volume type.
pub(crate) fn volume_size_limits(volume_type: &str) -> Result<(u64, u64)> {
    Ok(match volume_type {
        "gp2" | "gp3" => (1, 16384),
        "io1" => (4, 16384),
        "io2" => (4, 65536),
        "st1" | "sc1" => (125, 16384),
        "standard" => (1, 1024),
        other => {
            return Err(Error::invalid_value(format!(
                "Value ({other}) for parameter volumeType is invalid. Valid values: standard, io1, io2, gp2, gp3, sc1, st1"
            )))
        }
    })
}

/// The size in GiB of a new EBS volume, checked as EC2 checks it: within
/// its type's limits and not smaller than its snapshot (`snapshot_gib`).
pub(super) fn volume_size_gib(
    device: &str,
    ebs: &EbsBlockDevice,
    snapshot_gib: Option<u64>,
) -> Result<u64> {
    let volume_type = ebs.volume_type.as_deref().unwrap_or("gp3");
    let (lo, hi) = volume_size_limits(volume_type)?;
    let size = match (ebs.volume_size, snapshot_gib) {
        (Some(size), _) => size,
        (None, Some(snap)) => snap.max(lo),
        (None, None) => {
            return Err(Error::new(
                ErrorCode::InvalidBlockDeviceMapping,
                format!("The block device mapping of {device} needs a VolumeSize or a SnapshotId"),
            ))
        }
    };
    if size < lo {
        return Err(Error::invalid_value(format!(
            "Volume of {size}GiB is too small for volume type {volume_type} ({device}); minimum is {lo}GiB"
        )));
    }
    if size > hi {
        return Err(Error::invalid_value(format!(
            "Volume of {size}GiB is too large for volume type {volume_type} ({device}); maximum is {hi}GiB"
        )));
    }
    if let (Some(snap), Some(id)) = (snapshot_gib, &ebs.snapshot_id) {
        if size < snap {
            return Err(Error::new(
                ErrorCode::InvalidBlockDeviceMapping,
                format!("Volume of size {size}GB is smaller than snapshot '{id}', expect size >= {snap}GB"),
            ));
        }
    }
    Ok(size)
}

/// GiB to bytes, refusing what does not fit in 64 bits.
pub(crate) fn gib_to_bytes(gib: u64) -> Result<u64> {
    gib.checked_mul(1 << 30)
        .ok_or_else(|| Error::invalid_value(format!("A size of {gib} GiB is too large")))
}

/// EC2's boot mode rules: `uefi-preferred` boots UEFI where the firmware exists.
pub(super) fn resolve_boot_mode(image: &ImageState, arch: Arch) -> Result<BootMode> {
    let mode = image.boot_mode.unwrap_or(match arch {
        Arch::Arm64 => BootMode::Uefi,
        _ => BootMode::LegacyBios,
    });
    Ok(match (mode, arch) {
        (BootMode::LegacyBios, Arch::Arm64) => {
            return Err(Error::new(
                ErrorCode::InvalidParameterCombination,
                format!(
                    "Image {} is legacy-bios, which arm64 instances cannot boot",
                    image.image_id
                ),
            ))
        }
        (BootMode::UefiPreferred, Arch::X86_64) => {
            if machine::find_system_uefi_firmware(arch).is_ok() {
                BootMode::Uefi
            } else {
                BootMode::LegacyBios
            }
        }
        (BootMode::UefiPreferred, _) => BootMode::Uefi,
        (m, _) => m,
    })
}

/// The AMI's mappings with the launch request's on top (by device name);
/// `NoDevice` removes one.
pub(super) fn merge_mappings(
    image: &[BlockDeviceMapping],
    request: &[BlockDeviceMapping],
) -> Vec<BlockDeviceMapping> {
    let mut out: Vec<BlockDeviceMapping> = image.to_vec();
    for r in request {
        match out.iter_mut().find(|m| m.device_name == r.device_name) {
            Some(m) => {
                if r.no_device.is_some() {
                    m.no_device = Some(String::new());
                } else if let (Some(me), Some(re)) = (m.ebs.as_mut(), r.ebs.as_ref()) {
                    if re.volume_size.is_some() {
                        me.volume_size = re.volume_size;
                    }
                    if re.delete_on_termination.is_some() {
                        me.delete_on_termination = re.delete_on_termination;
                    }
                    if re.volume_type.is_some() {
                        me.volume_type = re.volume_type.clone();
                    }
                } else {
                    *m = r.clone();
                }
            }
            None => out.push(r.clone()),
        }
    }
    out.retain(|m| m.no_device.is_none());
    out
}

/// What amirun's EBS volumes cannot be: encrypted, or provisioned with
/// IOPS or throughput of their own. A request asking for it is refused,
/// not launched without it.
pub(super) fn check_ebs_options(requested: &[BlockDeviceMapping]) -> Result<()> {
    for m in requested {
        let Some(e) = &m.ebs else { continue };
        let refuse = |what: &str| {
            Err(Error::new(
                ErrorCode::UnsupportedOperation,
                format!(
                    "{what} of {} is not supported: amirun's volumes are plain qcow2 files; leave it out",
                    m.device_name
                ),
            ))
        };
        if e.encrypted == Some(true) {
            return refuse("Ebs.Encrypted=true");
        }
        if e.iops.is_some() {
            return refuse("Ebs.Iops");
        }
        if e.throughput.is_some() {
            return refuse("Ebs.Throughput");
        }
    }
    Ok(())
}

/// The region's one zone and default tenancy are the only placement.
pub(super) fn check_placement(p: Option<&Placement>, region: &str) -> Result<()> {
    let Some(p) = p else { return Ok(()) };
    let zone = format!("{region}a");
    // An empty member is an absent one (SDK users pass "" for "any").
    if let Some(z) = p
        .availability_zone
        .as_deref()
        .filter(|z| !z.is_empty() && **z != zone)
    {
        return Err(Error::invalid_value(format!(
            "Invalid availability zone: [{z}]; region {region} has {zone}"
        )));
    }
    if let Some(t) = p
        .tenancy
        .as_deref()
        .filter(|t| !t.is_empty() && *t != "default")
    {
        return Err(Error::new(
            ErrorCode::UnsupportedOperation,
            format!("Tenancy '{t}' is not supported; amirun's instances have default tenancy"),
        ));
    }
    Ok(())
}

/// EC2's MetadataOptions with defaults filled in.
pub(super) fn metadata_options(given: Option<&InstanceMetadataOptionsRequest>) -> Result<Value> {
    let tokens = given
        .and_then(|g| g.http_tokens.as_deref())
        .unwrap_or("optional");
    let endpoint = given
        .and_then(|g| g.http_endpoint.as_deref())
        .unwrap_or("enabled");
    let hops = given
        .and_then(|g| g.http_put_response_hop_limit)
        .unwrap_or(1);
    if !(1..=64).contains(&hops) {
        return Err(Error::invalid_value(format!(
            "Value ({hops}) for parameter HttpPutResponseHopLimit is invalid; use 1 to 64"
        )));
    }
    for (member, value) in [
        (
            "HttpProtocolIpv6",
            given.and_then(|g| g.http_protocol_ipv6.as_deref()),
        ),
        (
            "InstanceMetadataTags",
            given.and_then(|g| g.instance_metadata_tags.as_deref()),
        ),
    ] {
        match value {
            None | Some("disabled") => {}
            Some("enabled") => {
                return Err(Error::new(
                    ErrorCode::UnsupportedOperation,
                    format!(
                        "{member}=enabled is not supported by amirun's IMDS; leave it disabled"
                    ),
                ))
            }
            Some(other) => {
                return Err(Error::invalid_value(format!(
                    "Value ({other}) for parameter {member} is invalid; use enabled or disabled"
                )))
            }
        }
    }
    if !matches!(tokens, "optional" | "required") {
        return Err(Error::invalid_value(format!(
            "Value ({tokens}) for parameter HttpTokens is invalid; use optional or required"
        )));
    }
    if !matches!(endpoint, "enabled" | "disabled") {
        return Err(Error::invalid_value(format!(
            "Value ({endpoint}) for parameter HttpEndpoint is invalid; use enabled or disabled"
        )));
    }
    Ok(json!({
        "State": "applied",
        "HttpTokens": tokens,
        "HttpPutResponseHopLimit": hops,
        "HttpEndpoint": endpoint,
        "HttpProtocolIpv6": "disabled",
        "InstanceMetadataTags": "disabled",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_ec2() {
        assert_eq!(launch_count(1, 1).unwrap(), 1);
        assert_eq!(launch_count(1, 3).unwrap(), 3);
        assert_eq!(launch_count(2, 500).unwrap(), LAUNCH_LIMIT);
        let e = launch_count(1, 0).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidParameterValue);
        assert!(
            e.message().contains("Maximum instance count"),
            "{}",
            e.message()
        );
        assert_eq!(
            launch_count(0, 1).unwrap_err().code(),
            ErrorCode::InvalidParameterValue
        );
        let e = launch_count(5, 2).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidParameterValue);
        assert!(e.message().contains("(5)") && e.message().contains("(2)"));
        assert_eq!(
            launch_count(65, 65).unwrap_err().code(),
            ErrorCode::InstanceLimitExceeded
        );
    }

    #[test]
    fn volume_sizes_follow_ec2_per_type_and_snapshot() {
        let ebs = |size: Option<u64>, t: Option<&str>, snap: Option<&str>| EbsBlockDevice {
            volume_size: size,
            volume_type: t.map(String::from),
            snapshot_id: snap.map(String::from),
            ..Default::default()
        };
        let code = |r: Result<u64>| r.unwrap_err().code();
        assert_eq!(
            volume_size_gib("/dev/sdf", &ebs(Some(1), None, None), None).unwrap(),
            1
        );
        assert_eq!(
            code(volume_size_gib("/dev/sdf", &ebs(Some(0), None, None), None)),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            code(volume_size_gib(
                "/dev/sdf",
                &ebs(Some(17179869184), None, None),
                None
            )),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            code(volume_size_gib(
                "/dev/sdf",
                &ebs(Some(3), Some("io1"), None),
                None
            )),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            volume_size_gib("/dev/sdf", &ebs(Some(65536), Some("io2"), None), None).unwrap(),
            65536
        );
        assert_eq!(
            code(volume_size_gib(
                "/dev/sdf",
                &ebs(Some(20000), Some("io1"), None),
                None
            )),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            code(volume_size_gib(
                "/dev/sdf",
                &ebs(Some(100), Some("st1"), None),
                None
            )),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            code(volume_size_gib(
                "/dev/sdf",
                &ebs(Some(1025), Some("standard"), None),
                None
            )),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            code(volume_size_gib(
                "/dev/sdf",
                &ebs(Some(8), Some("gp9"), None),
                None
            )),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            code(volume_size_gib("/dev/sdf", &ebs(None, None, None), None)),
            ErrorCode::InvalidBlockDeviceMapping
        );
        // The snapshot's size is the default and the floor.
        let snap = Some("snap-0123456789abcdef0");
        assert_eq!(
            volume_size_gib("/dev/xvda", &ebs(None, None, snap), Some(8)).unwrap(),
            8
        );
        let e = volume_size_gib("/dev/xvda", &ebs(Some(4), None, snap), Some(8)).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidBlockDeviceMapping);
        assert!(
            e.message().contains("expect size >= 8GB"),
            "{}",
            e.message()
        );
        // A type's minimum applies to a smaller snapshot.
        assert_eq!(
            volume_size_gib("/dev/xvda", &ebs(None, Some("st1"), snap), Some(1)).unwrap(),
            125
        );
    }

    #[test]
    fn gib_to_bytes_refuses_overflow() {
        assert_eq!(gib_to_bytes(16384).unwrap(), 16384 << 30);
        assert!(gib_to_bytes(17179869184).is_err());
    }

    fn ebs(device: &str, size: Option<u64>, delete: Option<bool>) -> BlockDeviceMapping {
        BlockDeviceMapping {
            device_name: device.into(),
            ebs: Some(EbsBlockDevice {
                volume_size: size,
                delete_on_termination: delete,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A request's mapping changes the AMI's by device name, `NoDevice`
    /// removes one, a new device is added after the AMI's.
    #[test]
    fn mappings_merge_by_device_name() {
        let image = [
            ebs("/dev/xvda", Some(8), Some(true)),
            ebs("/dev/sdb", Some(4), Some(true)),
        ];
        let request = [
            ebs("/dev/xvda", Some(20), None),
            BlockDeviceMapping {
                device_name: "/dev/sdb".into(),
                no_device: Some(String::new()),
                ..Default::default()
            },
            ebs("/dev/sdc", Some(1), Some(false)),
        ];
        let merged = merge_mappings(&image, &request);
        let shown: Vec<(&str, Option<u64>, Option<bool>)> = merged
            .iter()
            .map(|m| {
                let e = m.ebs.as_ref().unwrap();
                (
                    m.device_name.as_str(),
                    e.volume_size,
                    e.delete_on_termination,
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("/dev/xvda", Some(20), Some(true)),
                ("/dev/sdc", Some(1), Some(false))
            ]
        );
        assert_eq!(merge_mappings(&image, &[]), image.to_vec());
    }

    #[test]
    fn ebs_options_amirun_cannot_give_are_refused() {
        let with = |f: fn(&mut EbsBlockDevice)| {
            let mut m = ebs("/dev/sdb", Some(1), None);
            f(m.ebs.as_mut().unwrap());
            check_ebs_options(&[m])
        };
        assert!(with(|_| {}).is_ok());
        assert!(with(|e| e.encrypted = Some(false)).is_ok());
        for refused in [
            with(|e| e.encrypted = Some(true)),
            with(|e| e.iops = Some(3000)),
            with(|e| e.throughput = Some(125)),
        ] {
            assert_eq!(refused.unwrap_err().code(), ErrorCode::UnsupportedOperation);
        }
    }

    #[test]
    fn placement_is_the_regions_one_zone_with_default_tenancy() {
        let zone = |z: &str| Placement {
            availability_zone: Some(z.into()),
            tenancy: None,
        };
        assert!(check_placement(None, "us-east-1").is_ok());
        assert!(check_placement(Some(&zone("us-east-1a")), "us-east-1").is_ok());
        let e = check_placement(Some(&zone("us-east-1b")), "us-east-1").unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidParameterValue);
        let dedicated = Placement {
            availability_zone: None,
            tenancy: Some("dedicated".into()),
        };
        let e = check_placement(Some(&dedicated), "us-east-1").unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnsupportedOperation);
    }

    /// Defaults are EC2's; what amirun's IMDS cannot do is refused, not dropped.
    #[test]
    fn metadata_options_default_check_and_refuse() {
        let shown = metadata_options(None).unwrap();
        assert_eq!(shown["HttpTokens"], "optional");
        assert_eq!(shown["HttpEndpoint"], "enabled");
        assert_eq!(shown["HttpPutResponseHopLimit"], 1);
        let given = |f: fn(&mut InstanceMetadataOptionsRequest)| {
            let mut o = InstanceMetadataOptionsRequest::default();
            f(&mut o);
            metadata_options(Some(&o))
        };
        let v = given(|o| o.http_tokens = Some("required".into())).unwrap();
        assert_eq!(v["HttpTokens"], "required");
        let code = |r: Result<Value>| r.unwrap_err().code();
        assert_eq!(
            code(given(|o| o.http_tokens = Some("sometimes".into()))),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            code(given(|o| o.http_put_response_hop_limit = Some(65))),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            code(given(|o| o.instance_metadata_tags = Some("enabled".into()))),
            ErrorCode::UnsupportedOperation
        );
        assert!(given(|o| o.http_protocol_ipv6 = Some("disabled".into())).is_ok());
    }
}
