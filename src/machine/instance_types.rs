//! EC2 instance types: the names users already know, mapped to vCPUs,
//! memory and instance-store disks with EC2's own numbers.
//!
//! Only what the guest can see is modelled (no network or EBS bandwidth).
//! Instance-store sizes are the NVMe SSDs EC2 attaches to `d` types.

/// One EC2 instance type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceType {
    /// EC2 name, e.g. `t3.micro`.
    pub name: &'static str,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Size in GiB of each instance-store disk (`ephemeral0`, `ephemeral1`, ...).
    pub instance_store_gib: &'static [u64],
    /// EC2 architecture names this type runs (`i386`, `x86_64`, `arm64`).
    pub architectures: &'static [&'static str],
}

impl InstanceType {
    /// Whether an AMI of EC2 architecture `ec2_arch` can run on this type.
    pub fn supports_architecture(&self, ec2_arch: &str) -> bool {
        self.architectures.contains(&ec2_arch)
    }
}

const X86_32_64: &[&str] = &["i386", "x86_64"];
const X86: &[&str] = &["x86_64"];
const ARM: &[&str] = &["arm64"];
const NONE: &[u64] = &[];

const fn t(
    name: &'static str,
    vcpus: u32,
    memory_mib: u64,
    instance_store_gib: &'static [u64],
    architectures: &'static [&'static str],
) -> InstanceType {
    InstanceType {
        name,
        vcpus,
        memory_mib,
        instance_store_gib,
        architectures,
    }
}

/// Every instance type amirun knows, in EC2's family order.
pub static INSTANCE_TYPES: &[InstanceType] = &[
    // t2: Xen burstable; the small sizes also run 32-bit AMIs.
    t("t2.nano", 1, 512, NONE, X86_32_64),
    t("t2.micro", 1, 1024, NONE, X86_32_64),
    t("t2.small", 1, 2048, NONE, X86_32_64),
    t("t2.medium", 2, 4096, NONE, X86_32_64),
    t("t2.large", 2, 8192, NONE, X86),
    t("t2.xlarge", 4, 16384, NONE, X86),
    t("t2.2xlarge", 8, 32768, NONE, X86),
    // t3 / t3a: Nitro burstable, Intel / AMD.
    t("t3.nano", 2, 512, NONE, X86),
    t("t3.micro", 2, 1024, NONE, X86),
    t("t3.small", 2, 2048, NONE, X86),
    t("t3.medium", 2, 4096, NONE, X86),
    t("t3.large", 2, 8192, NONE, X86),
    t("t3.xlarge", 4, 16384, NONE, X86),
    t("t3.2xlarge", 8, 32768, NONE, X86),
    t("t3a.nano", 2, 512, NONE, X86),
    t("t3a.micro", 2, 1024, NONE, X86),
    t("t3a.small", 2, 2048, NONE, X86),
    t("t3a.medium", 2, 4096, NONE, X86),
    t("t3a.large", 2, 8192, NONE, X86),
    t("t3a.xlarge", 4, 16384, NONE, X86),
    t("t3a.2xlarge", 8, 32768, NONE, X86),
    // t4g: Graviton2 burstable.
    t("t4g.nano", 2, 512, NONE, ARM),
    t("t4g.micro", 2, 1024, NONE, ARM),
    t("t4g.small", 2, 2048, NONE, ARM),
    t("t4g.medium", 2, 4096, NONE, ARM),
    t("t4g.large", 2, 8192, NONE, ARM),
    t("t4g.xlarge", 4, 16384, NONE, ARM),
    t("t4g.2xlarge", 8, 32768, NONE, ARM),
    // General purpose.
    t("m5.large", 2, 8192, NONE, X86),
    t("m5.xlarge", 4, 16384, NONE, X86),
    t("m5.2xlarge", 8, 32768, NONE, X86),
    t("m5.4xlarge", 16, 65536, NONE, X86),
    t("m5d.large", 2, 8192, &[75], X86),
    t("m5d.xlarge", 4, 16384, &[150], X86),
    t("m5d.2xlarge", 8, 32768, &[300], X86),
    t("m5d.4xlarge", 16, 65536, &[300, 300], X86),
    t("m6i.large", 2, 8192, NONE, X86),
    t("m6i.xlarge", 4, 16384, NONE, X86),
    t("m6g.large", 2, 8192, NONE, ARM),
    t("m6g.xlarge", 4, 16384, NONE, ARM),
    t("m7g.large", 2, 8192, NONE, ARM),
    t("m7g.xlarge", 4, 16384, NONE, ARM),
    // Compute optimised.
    t("c5.large", 2, 4096, NONE, X86),
    t("c5.xlarge", 4, 8192, NONE, X86),
    t("c5d.large", 2, 4096, &[50], X86),
    t("c6g.medium", 1, 2048, NONE, ARM),
    t("c6g.large", 2, 4096, NONE, ARM),
    // Memory optimised.
    t("r5.large", 2, 16384, NONE, X86),
];

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
            let family = t.name.split('.').next().unwrap();
            let graviton = family.ends_with('g');
            assert_eq!(t.supports_architecture("arm64"), graviton, "{}", t.name);
            assert_eq!(t.supports_architecture("x86_64"), !graviton, "{}", t.name);
            assert!(t.vcpus >= 1 && t.memory_mib >= 512, "{}", t.name);
            assert_eq!(
                family.contains('d'),
                !t.instance_store_gib.is_empty(),
                "{}",
                t.name
            );
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
    }
}
