//! EC2's rules for EBS volumes that need no state: device names, sizes per
//! type, IOPS and throughput, and the performance EC2 shows.

use super::*;

/// EC2's device names for an EBS volume of a Linux instance: `/dev/sd[b-z]`,
/// `/dev/sd[b-z][1-15]`, `/dev/xvd[b-z]`, `/dev/xvd[b-c][a-z]`,
/// `/dev/xvd[a-z][a-z]`... `/dev/hd[a-z]`, `/dev/hd[a-z][1-15]`.
pub(crate) fn check_device_name(device: &str) -> Result<()> {
    let bad = || {
        Error::invalid_value(format!(
            "Value ({device}) for parameter device is invalid. {device} is not a valid EBS device name."
        ))
    };
    let lower = |c: u8| c.is_ascii_lowercase();
    let partition = |rest: &[u8]| -> bool {
        match std::str::from_utf8(rest)
            .ok()
            .and_then(|s| s.parse::<u8>().ok())
        {
            Some(n) => (1..=15).contains(&n) && !rest.starts_with(b"0"),
            None => rest.is_empty(),
        }
    };
    let ok = if let Some(rest) = device.strip_prefix("/dev/sd") {
        let b = rest.as_bytes();
        !b.is_empty() && (b'b'..=b'z').contains(&b[0]) && partition(&b[1..])
    } else if let Some(rest) = device.strip_prefix("/dev/xvd") {
        let b = rest.as_bytes();
        match b {
            [c] => (b'b'..=b'z').contains(c),
            [c, d] => lower(*c) && lower(*d),
            _ => false,
        }
    } else if let Some(rest) = device.strip_prefix("/dev/hd") {
        let b = rest.as_bytes();
        !b.is_empty() && lower(b[0]) && partition(&b[1..])
    } else {
        false
    };
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// IOPS and throughput a volume of this type and size may be given, as EC2
/// checks them; returns what the volume gets (`None`: the type's baseline).
pub(super) fn check_performance(
    volume_type: &str,
    size_gib: u64,
    iops: Option<u64>,
    throughput: Option<u64>,
) -> Result<VolumePerformance> {
    let combination = |what: &str| {
        Error::new(
            ErrorCode::InvalidParameterCombination,
            format!("The parameter {what} is not supported for {volume_type} volumes."),
        )
    };
    if throughput.is_some() && volume_type != "gp3" {
        return Err(combination("throughput"));
    }
    let (lo, hi, per_gib) = match volume_type {
        "gp3" => (3000, 16000, 500),
        "io1" => (100, 64000, 50),
        "io2" => (100, 256000, 1000),
        _ => {
            if iops.is_some() {
                return Err(combination("iops"));
            }
            return Ok(VolumePerformance::default());
        }
    };
    let iops = match (iops, volume_type) {
        (Some(n), _) => Some(n),
        (None, "gp3") => None,
        (None, _) => {
            return Err(Error::new(
                ErrorCode::MissingParameter,
                format!("The request must contain the parameter iops for {volume_type} volumes"),
            ))
        }
    };
    if let Some(n) = iops {
        if n < lo {
            return Err(Error::invalid_value(format!(
                "Volume iops of {n} is too low; minimum is {lo}."
            )));
        }
        if n > hi {
            return Err(Error::invalid_value(format!(
                "Volume iops of {n} is too high; maximum is {hi}."
            )));
        }
        if n > per_gib * size_gib && n > lo {
            return Err(Error::invalid_value(format!(
                "Iops to volume size ratio of {:.6} is too high; maximum is {:.6}.",
                n as f64 / size_gib as f64,
                per_gib as f64
            )));
        }
    }
    if let Some(t) = throughput {
        if !(125..=1000).contains(&t) {
            return Err(Error::invalid_value(format!(
                "Throughput of {t} MiB/s is outside the range 125-1000 MiB/s for gp3 volumes."
            )));
        }
        let with = iops.unwrap_or(3000);
        if t * 4 > with && t > 125 {
            return Err(Error::invalid_value(format!(
                "Throughput to iops ratio of {:.6} is too high; maximum is 0.250000.",
                t as f64 / with as f64
            )));
        }
    }
    Ok(VolumePerformance { iops, throughput })
}

/// The IOPS and throughput EC2 shows for a volume.
pub(crate) fn performance_shown(
    volume_type: &str,
    size_gib: u64,
    p: VolumePerformance,
) -> (Option<u64>, Option<u64>) {
    let iops = match volume_type {
        "gp3" => Some(p.iops.unwrap_or(3000)),
        "gp2" => Some((size_gib * 3).clamp(100, 16000)),
        "io1" | "io2" => p.iops,
        _ => None,
    };
    let throughput = (volume_type == "gp3").then(|| p.throughput.unwrap_or(125));
    (iops, throughput)
}

pub(super) fn size_check(volume_type: &str, size: u64) -> Result<()> {
    let (lo, hi) = volume_size_limits(volume_type)?;
    if size < lo {
        return Err(Error::invalid_value(format!(
            "Volume of {size}GiB is too small for volume type {volume_type}; minimum is {lo}GiB."
        )));
    }
    if size > hi {
        return Err(Error::invalid_value(format!(
            "Volume of {size}GiB is too large for volume type {volume_type}; maximum is {hi}GiB."
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_follow_ec2() {
        for ok in [
            "/dev/sdf",
            "/dev/sdp",
            "/dev/sdb1",
            "/dev/sdz15",
            "/dev/xvdf",
            "/dev/xvdba",
            "/dev/hdb",
        ] {
            assert!(check_device_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "sdf",
            "/dev/sda",
            "/dev/sdf16",
            "/dev/sdf0",
            "/dev/xvda1",
            "/dev/vdb",
            "/dev/nvme1n1",
            "/dev/sd",
        ] {
            let e = check_device_name(bad).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidParameterValue, "{bad}");
            assert!(
                e.message().contains("is not a valid EBS device name"),
                "{}",
                e.message()
            );
        }
    }

    #[test]
    fn iops_and_throughput_follow_ec2_per_type() {
        assert_eq!(
            check_performance("gp3", 10, None, None).unwrap(),
            VolumePerformance::default()
        );
        assert!(check_performance("gp3", 10, Some(5000), None).is_ok());
        // 500 IOPS per GiB.
        assert!(check_performance("gp3", 8, Some(5000), None).is_err());
        assert!(check_performance("gp3", 100, Some(20000), None).is_err());
        assert_eq!(
            check_performance("gp2", 10, Some(100), None)
                .unwrap_err()
                .code(),
            ErrorCode::InvalidParameterCombination
        );
        assert_eq!(
            check_performance("io1", 10, None, None).unwrap_err().code(),
            ErrorCode::MissingParameter
        );
        assert!(check_performance("io1", 10, Some(500), None).is_ok());
        assert!(check_performance("io1", 10, Some(501), None).is_err());
        assert!(check_performance("io2", 10, Some(10000), None).is_ok());
        // gp3 throughput: 125-1000 MiB/s and at most IOPS/4.
        assert!(check_performance("gp3", 10, None, Some(750)).is_ok());
        assert!(check_performance("gp3", 10, None, Some(751)).is_err());
        assert!(check_performance("gp3", 100, Some(8000), Some(1000)).is_ok());
        assert_eq!(
            check_performance("io1", 10, Some(100), Some(200))
                .unwrap_err()
                .code(),
            ErrorCode::InvalidParameterCombination
        );
        assert_eq!(
            performance_shown("gp2", 10, VolumePerformance::default()),
            (Some(100), None)
        );
        assert_eq!(
            performance_shown("gp3", 10, VolumePerformance::default()),
            (Some(3000), Some(125))
        );
    }
}
