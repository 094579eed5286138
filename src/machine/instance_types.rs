//! EC2 instance types: the names users already know, mapped to vCPUs,
//! memory and instance-store disks with EC2's own numbers.
//!
//! The table (`instance_types_table.rs`) is written by
//! `scripts/gen-instance-types.py` from EC2's DescribeInstanceTypes answers
//! (moto keeps a dump of them in `moto/ec2/resources/instance_types.json`).
//! It covers the previous generations a user may still name (t1, m1, m2,
//! m3, m4, c1, c3, c4, r3, r4, i2, d2, x1, ...) and today's general purpose,
//! compute, memory and storage families with their `d` variants, without
//! bare-metal sizes. Only what the guest can see is modelled (no network
//! or EBS bandwidth).

/// One EC2 instance type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceType {
    /// EC2 name, e.g. `t3.micro`.
    pub name: &'static str,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Physical cores EC2 gives by default.
    pub cores: u32,
    /// Threads per core EC2 gives by default.
    pub threads_per_core: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Size in GB of each instance-store disk (`ephemeral0`, `ephemeral1`, ...).
    pub instance_store_gib: &'static [u64],
    /// What the instance-store disks are (meaningless without disks).
    pub instance_store: StoreKind,
    /// EC2 architecture names this type runs (`i386`, `x86_64`, `arm64`).
    pub architectures: &'static [&'static str],
    /// EC2's boot modes for the type (`legacy-bios`, `uefi`).
    pub boot_modes: &'static [&'static str],
    flags: u8,
}

/// Instance-store disks: their medium and whether they are NVMe devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreKind {
    /// `ssd` or `hdd` (empty without disks).
    pub media: &'static str,
    /// EC2's NvmeSupport: `required` or `unsupported`.
    pub nvme: &'static str,
}

const CURRENT: u8 = 1;
const BURSTABLE: u8 = 2;
const FREE_TIER: u8 = 4;
const NITRO: u8 = 8;
const STORE_ROOT: u8 = 16;

impl InstanceType {
    /// Whether an AMI of EC2 architecture `ec2_arch` can run on this type.
    pub fn supports_architecture(&self, ec2_arch: &str) -> bool {
        self.architectures.contains(&ec2_arch)
    }

    /// EC2's `CurrentGeneration`.
    pub fn current_generation(&self) -> bool {
        self.flags & CURRENT != 0
    }

    /// EC2's `BurstablePerformanceSupported` (t2, t3, t3a, t4g).
    pub fn burstable(&self) -> bool {
        self.flags & BURSTABLE != 0
    }

    /// EC2's `FreeTierEligible`.
    pub fn free_tier_eligible(&self) -> bool {
        self.flags & FREE_TIER != 0
    }

    /// EC2's `Hypervisor`: `nitro` or `xen`.
    pub fn hypervisor(&self) -> &'static str {
        if self.flags & NITRO != 0 {
            "nitro"
        } else {
            "xen"
        }
    }

    /// EC2's `SupportedRootDeviceTypes`.
    pub fn root_device_types(&self) -> &'static [&'static str] {
        if self.flags & STORE_ROOT != 0 {
            &["ebs", "instance-store"]
        } else {
            &["ebs"]
        }
    }

    /// The family: `m5d` for `m5d.large`.
    pub fn family(&self) -> &'static str {
        self.name.split('.').next().unwrap_or(self.name)
    }

    /// The architectures as EC2 names them in a mismatch error
    /// (64-bit first: `x86_64,i386`).
    pub fn architectures_for_error(&self) -> String {
        let mut a: Vec<&str> = self.architectures.to_vec();
        a.sort_by_key(|x| *x == "i386");
        a.join(",")
    }
}

const X86_32_64: &[&str] = &["i386", "x86_64"];
const X86: &[&str] = &["x86_64"];
const ARM: &[&str] = &["arm64"];
const BIOS: &[&str] = &["legacy-bios"];
const UEFI: &[&str] = &["uefi"];
const BIOS_UEFI: &[&str] = &["legacy-bios", "uefi"];
const NONE: &[u64] = &[];
const NO_STORE: StoreKind = StoreKind {
    media: "",
    nvme: "unsupported",
};
const SSD: StoreKind = StoreKind {
    media: "ssd",
    nvme: "unsupported",
};
const HDD: StoreKind = StoreKind {
    media: "hdd",
    nvme: "unsupported",
};
const NVME_SSD: StoreKind = StoreKind {
    media: "ssd",
    nvme: "required",
};
#[allow(dead_code)]
const NVME_HDD: StoreKind = StoreKind {
    media: "hdd",
    nvme: "required",
};

#[allow(clippy::too_many_arguments)]
const fn t(
    name: &'static str,
    (vcpus, cores, threads_per_core): (u32, u32, u32),
    memory_mib: u64,
    instance_store_gib: &'static [u64],
    instance_store: StoreKind,
    architectures: &'static [&'static str],
    boot_modes: &'static [&'static str],
    flags: u8,
) -> InstanceType {
    InstanceType {
        name,
        vcpus,
        cores,
        threads_per_core,
        memory_mib,
        instance_store_gib,
        instance_store,
        architectures,
        boot_modes,
        flags,
    }
}

/// The type EC2 launches when RunInstances names none.
pub const DEFAULT_INSTANCE_TYPE: &str = "m1.small";

/// Every instance type amirun knows, in EC2's family order.
pub static INSTANCE_TYPES: &[InstanceType] = &include!("instance_types_table.rs");

/// The instance type called `name`, if amirun knows it.
///
/// ```
/// let t = amirun::machine::instance_type("m5d.large").unwrap();
/// assert_eq!((t.vcpus, t.memory_mib, t.instance_store_gib), (2, 8192, &[75u64][..]));
/// ```
pub fn instance_type(name: &str) -> Option<&'static InstanceType> {
    INSTANCE_TYPES.iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_graviton_is_arm64() {
        let mut names: Vec<_> = INSTANCE_TYPES.iter().map(|t| t.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), INSTANCE_TYPES.len());
        for t in INSTANCE_TYPES {
            let family = t.family();
            let graviton = family.ends_with('g') || family.ends_with("gd") || family == "a1";
            assert_eq!(t.supports_architecture("arm64"), graviton, "{}", t.name);
            assert_eq!(t.supports_architecture("x86_64"), !graviton, "{}", t.name);
            assert!(t.vcpus >= 1 && t.memory_mib >= 512, "{}", t.name);
            assert_eq!(t.vcpus, t.cores * t.threads_per_core, "{}", t.name);
            assert_eq!(
                t.instance_store_gib.is_empty(),
                t.instance_store.media.is_empty(),
                "{}",
                t.name
            );
            if family.contains('d') && family != "d2" {
                assert!(!t.instance_store_gib.is_empty(), "{}", t.name);
            }
            assert_eq!(t.burstable(), family.starts_with('t') && family != "t1");
        }
    }

    #[test]
    fn well_known_sizes() {
        let micro = instance_type("t3.micro").unwrap();
        assert_eq!((micro.vcpus, micro.memory_mib), (2, 1024));
        assert!(instance_type("t2.micro")
            .unwrap()
            .supports_architecture("i386"));
        assert_eq!(
            instance_type("m5d.4xlarge").unwrap().instance_store_gib,
            &[300, 300]
        );
        assert_eq!(instance_type("c6g.medium").unwrap().vcpus, 1);
        assert!(instance_type("x9.huge").is_none());
        let small = instance_type(DEFAULT_INSTANCE_TYPE).unwrap();
        assert_eq!(
            (small.vcpus, small.memory_mib, small.instance_store_gib),
            (1, 1740, &[160u64][..])
        );
        assert_eq!(small.instance_store.media, "hdd");
        assert_eq!(small.architectures_for_error(), "x86_64,i386");
        assert!(!small.current_generation());
        assert_eq!(
            instance_type("m1.xlarge").unwrap().instance_store_gib,
            &[420; 4]
        );
        assert_eq!(
            instance_type("c3.large").unwrap().instance_store_gib,
            &[16, 16]
        );
        assert_eq!(instance_type("r3.large").unwrap().memory_mib, 15360);
    }
}
