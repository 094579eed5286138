//! `DescribeInstanceTypes` and `DescribeInstanceTypeOfferings`: the machine
//! table ([`crate::machine::instance_types`]) in EC2's shapes, so SDKs,
//! Terraform and the aws CLI can ask what they may launch here.
//!
//! Every type amirun knows is offered in every region and in its one zone.

use super::filter;
use super::paging::{page, Paging};
use super::shapes::Filter;
use super::{Caller, Error, ErrorCode, Result, Service};
use crate::machine::{InstanceType, INSTANCE_TYPES};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const TYPE_FILTERS: &[&str] = &[
    "instance-type",
    "current-generation",
    "processor-info.supported-architecture",
    "vcpu-info.default-vcpus",
    "vcpu-info.default-cores",
    "vcpu-info.default-threads-per-core",
    "memory-info.size-in-mib",
    "instance-storage-supported",
    "instance-storage-info.total-size-in-gb",
    "instance-storage-info.disk.type",
    "burstable-performance-supported",
    "free-tier-eligible",
    "hypervisor",
    "supported-boot-mode",
    "supported-root-device-type",
    "bare-metal",
    "auto-recovery-supported",
    "dedicated-hosts-supported",
    "ebs-info.attachment-limit-type",
    "ebs-info.maximum-ebs-attachments",
    "ebs-info.ebs-optimized-info.baseline-bandwidth-in-mbps",
    "ebs-info.ebs-optimized-info.baseline-iops",
    "ebs-info.ebs-optimized-info.baseline-throughput-in-mbps",
    "ebs-info.ebs-optimized-info.maximum-bandwidth-in-mbps",
    "ebs-info.ebs-optimized-info.maximum-iops",
    "ebs-info.ebs-optimized-info.maximum-throughput-in-mbps",
    "ebs-info.ebs-optimized-support",
    "ebs-info.encryption-support",
    "ebs-info.nvme-support",
    "hibernation-supported",
    "instance-storage-info.disk.count",
    "instance-storage-info.disk.size-in-gb",
    "instance-storage-info.encryption-support",
    "instance-storage-info.nvme-support",
    "network-info.bandwidth-weightings",
    "network-info.efa-info.maximum-efa-interfaces",
    "network-info.efa-supported",
    "network-info.ena-support",
    "network-info.flexible-ena-queues-support",
    "network-info.encryption-in-transit-supported",
    "network-info.ipv4-addresses-per-interface",
    "network-info.ipv6-addresses-per-interface",
    "network-info.ipv6-supported",
    "network-info.maximum-network-cards",
    "network-info.maximum-network-interfaces",
    "network-info.network-performance",
    "nitro-enclaves-support",
    "nitro-tpm-support",
    "nitro-tpm-info.supported-versions",
    "processor-info.sustained-clock-speed-in-ghz",
    "processor-info.supported-features",
    "reboot-migration-support",
    "supported-usage-class",
    "supported-virtualization-type",
    "vcpu-info.valid-cores",
    "vcpu-info.valid-threads-per-core",
];

const OFFERING_FILTERS: &[&str] = &["location", "instance-type"];

/// `DescribeInstanceTypes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeInstanceTypesRequest {
    #[serde(default)]
    pub instance_types: Vec<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// 5 to 100.
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// What `DescribeInstanceTypes` returns (each type as EC2's `InstanceTypeInfo`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeInstanceTypesResult {
    pub instance_types: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `DescribeInstanceTypeOfferings`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeInstanceTypeOfferingsRequest {
    /// `region` (default), `availability-zone` or `availability-zone-id`.
    #[serde(default)]
    pub location_type: Option<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// 5 to 1000.
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// One offering: a type in a location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceTypeOffering {
    pub instance_type: String,
    pub location_type: String,
    pub location: String,
}

/// What `DescribeInstanceTypeOfferings` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeInstanceTypeOfferingsResult {
    pub instance_type_offerings: Vec<InstanceTypeOffering>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

fn info(t: &InstanceType) -> Value {
    let mut v = json!({
        "InstanceType": t.name,
        "CurrentGeneration": t.current_generation(),
        "FreeTierEligible": t.free_tier_eligible(),
        "SupportedUsageClasses": ["on-demand"],
        "SupportedRootDeviceTypes": t.root_device_types(),
        "SupportedVirtualizationTypes": ["hvm"],
        "BareMetal": false,
        "Hypervisor": t.hypervisor(),
        "ProcessorInfo": { "SupportedArchitectures": t.architectures },
        "VCpuInfo": {
            "DefaultVCpus": t.vcpus,
            "DefaultCores": t.cores,
            "DefaultThreadsPerCore": t.threads_per_core,
        },
        "MemoryInfo": { "SizeInMiB": t.memory_mib },
        "InstanceStorageSupported": !t.instance_store_gib.is_empty(),
        "BurstablePerformanceSupported": t.burstable(),
        "SupportedBootModes": t.boot_modes,
    });
    if let Some(&size) = t.instance_store_gib.first() {
        v["InstanceStorageInfo"] = json!({
            "TotalSizeInGB": t.instance_store_gib.iter().sum::<u64>(),
            "Disks": [{
                "SizeInGB": size,
                "Count": t.instance_store_gib.len(),
                "Type": t.instance_store.media,
            }],
            "NvmeSupport": t.instance_store.nvme,
        });
    }
    v
}

/// The values a type has for a filter name.
fn type_values(t: &InstanceType, name: &str) -> Vec<String> {
    let b = |x: bool| vec![x.to_string()];
    match name {
        "instance-type" => vec![t.name.to_string()],
        "current-generation" => b(t.current_generation()),
        "processor-info.supported-architecture" => {
            t.architectures.iter().map(|a| a.to_string()).collect()
        }
        "vcpu-info.default-vcpus" => vec![t.vcpus.to_string()],
        "vcpu-info.default-cores" => vec![t.cores.to_string()],
        "vcpu-info.default-threads-per-core" => vec![t.threads_per_core.to_string()],
        "memory-info.size-in-mib" => vec![t.memory_mib.to_string()],
        "instance-storage-supported" => b(!t.instance_store_gib.is_empty()),
        "instance-storage-info.total-size-in-gb" if !t.instance_store_gib.is_empty() => {
            vec![t.instance_store_gib.iter().sum::<u64>().to_string()]
        }
        "instance-storage-info.disk.type" if !t.instance_store_gib.is_empty() => {
            vec![t.instance_store.media.to_string()]
        }
        "burstable-performance-supported" => b(t.burstable()),
        "free-tier-eligible" => b(t.free_tier_eligible()),
        "hypervisor" => vec![t.hypervisor().to_string()],
        "supported-boot-mode" => t.boot_modes.iter().map(|m| m.to_string()).collect(),
        "supported-root-device-type" => t
            .root_device_types()
            .iter()
            .map(|m| m.to_string())
            .collect(),
        "bare-metal" => b(false),
        n => filter::shown_values(&info(t), n),
    }
}

impl Service {
    /// `DescribeInstanceTypes`: EC2's facts for the named types, or all, filtered and paged.
    pub fn describe_instance_types(
        &mut self,
        _caller: &Caller,
        input: DescribeInstanceTypesRequest,
    ) -> Result<DescribeInstanceTypesResult> {
        filter::check_names(&input.filters, TYPE_FILTERS)?;
        let unknown: Vec<&str> = input
            .instance_types
            .iter()
            .filter(|n| crate::machine::instance_type(n).is_none())
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidInstanceType,
                format!(
                    "The following supplied instance types do not exist: [{}]",
                    unknown.join(", ")
                ),
            ));
        }
        let items: Vec<Value> = INSTANCE_TYPES
            .iter()
            .filter(|t| {
                input.instance_types.is_empty() || input.instance_types.iter().any(|n| n == t.name)
            })
            .filter(|t| filter::matches(&input.filters, |name| type_values(t, name)))
            .map(info)
            .collect();
        let paging = Paging {
            max_results: input.max_results,
            next_token: input.next_token,
        };
        let (instance_types, next_token) = page(items, &paging, 5, 100)?;
        Ok(DescribeInstanceTypesResult {
            instance_types,
            next_token,
        })
    }

    /// `DescribeInstanceTypeOfferings`: every known type, in the region or its zone.
    pub fn describe_instance_type_offerings(
        &mut self,
        caller: &Caller,
        input: DescribeInstanceTypeOfferingsRequest,
    ) -> Result<DescribeInstanceTypeOfferingsResult> {
        filter::check_names(&input.filters, OFFERING_FILTERS)?;
        let location_type = input.location_type.as_deref().unwrap_or("region");
        let location = match location_type {
            "region" => caller.region.clone(),
            "availability-zone" => format!("{}a", caller.region),
            "availability-zone-id" => super::regions::zone_id(&caller.region),
            other => {
                return Err(Error::invalid_value(format!(
                    "Value ({other}) for parameter locationType is invalid. Allowed values are region, availability-zone, availability-zone-id."
                )))
            }
        };
        let items: Vec<InstanceTypeOffering> = INSTANCE_TYPES
            .iter()
            .filter(|t| {
                filter::matches(&input.filters, |name| match name {
                    "location" => vec![location.clone()],
                    "instance-type" => vec![t.name.to_string()],
                    _ => Vec::new(),
                })
            })
            .map(|t| InstanceTypeOffering {
                instance_type: t.name.to_string(),
                location_type: location_type.to_string(),
                location: location.clone(),
            })
            .collect();
        let paging = Paging {
            max_results: input.max_results,
            next_token: input.next_token,
        };
        let (instance_type_offerings, next_token) = page(items, &paging, 5, 1000)?;
        Ok(DescribeInstanceTypeOfferingsResult {
            instance_type_offerings,
            next_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_everything_once() {
        let items: Vec<Value> = (0..12).map(|n| json!(n)).collect();
        let mut paging = Paging {
            max_results: Some(5),
            next_token: None,
        };
        let mut seen = Vec::new();
        loop {
            let (p, next) = page(items.clone(), &paging, 5, 100).unwrap();
            seen.extend(p);
            match next {
                Some(t) => paging.next_token = Some(t),
                None => break,
            }
        }
        assert_eq!(seen, items);
        paging.next_token = Some("nonsense".into());
        assert_eq!(
            page(items.clone(), &paging, 5, 100).unwrap_err().code(),
            ErrorCode::InvalidNextToken
        );
        paging.max_results = Some(2);
        assert_eq!(
            page(items, &paging, 5, 100).unwrap_err().code(),
            ErrorCode::InvalidParameterValue
        );
    }

    #[test]
    fn m1_small_reads_as_ec2_describes_it() {
        let t = crate::machine::instance_type("m1.small").unwrap();
        let v = info(t);
        assert_eq!(v["MemoryInfo"]["SizeInMiB"], 1740);
        assert_eq!(
            v["ProcessorInfo"]["SupportedArchitectures"],
            json!(["i386", "x86_64"])
        );
        assert_eq!(
            v["InstanceStorageInfo"]["Disks"],
            json!([{"SizeInGB": 160, "Count": 1, "Type": "hdd"}])
        );
        assert_eq!(v["CurrentGeneration"], false);
    }
}
