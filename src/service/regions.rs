//! Regions and availability zones: what SDKs and Terraform's AWS provider
//! ask first. Every region name is usable; the usual commercial ones are
//! listed, each with one zone (`<region>a`), where instances are placed.

use super::shapes::Filter;
use super::{filter, Caller, Error, Result, Service};
use crate::catalog::DEFAULT_REGIONS;
use serde::{Deserialize, Serialize};

/// `DescribeRegions`. `AllRegions` changes nothing: every region is enabled.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeRegionsRequest {
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub region_names: Vec<String>,
    #[serde(default)]
    pub all_regions: Option<bool>,
}

/// A region as EC2 shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Region {
    pub endpoint: String,
    pub region_name: String,
    pub opt_in_status: String,
}

/// What `DescribeRegions` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeRegionsResult {
    pub regions: Vec<Region>,
}

/// `DescribeAvailabilityZones`. `AllAvailabilityZones` changes nothing:
/// the region's one zone is always opted in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeAvailabilityZonesRequest {
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub zone_names: Vec<String>,
    #[serde(default)]
    pub zone_ids: Vec<String>,
    #[serde(default)]
    pub all_availability_zones: Option<bool>,
}

/// A zone as EC2 shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AvailabilityZone {
    pub state: String,
    pub opt_in_status: String,
    pub messages: Vec<String>,
    pub region_name: String,
    pub zone_name: String,
    pub zone_id: String,
    pub group_name: String,
    pub network_border_group: String,
    pub zone_type: String,
}

/// What `DescribeAvailabilityZones` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeAvailabilityZonesResult {
    pub availability_zones: Vec<AvailabilityZone>,
}

/// `DescribeRegions`' filters (botocore's list), answered from the region
/// as shown ([`filter::shown_values`]).
const REGION_FILTERS: &[&str] = &["endpoint", "opt-in-status", "region-name"];

/// `DescribeAvailabilityZones`' filters (botocore's list), answered from
/// the zone as shown; what a zone of amirun never has (a parent zone, a
/// long group name) matches nothing.
const ZONE_FILTERS: &[&str] = &[
    "group-long-name",
    "group-name",
    "message",
    "opt-in-status",
    "parent-zone-id",
    "parent-zone-name",
    "region-name",
    "state",
    "zone-id",
    "zone-name",
    "zone-type",
];

/// EC2's short zone id prefix for a region (`us-east-1` -> `use1`).
pub(crate) fn zone_id(region: &str) -> String {
    let parts: Vec<&str> = region.split('-').collect();
    let (a, b, n) = (
        parts.first().copied().unwrap_or(""),
        parts.get(1).copied().unwrap_or(""),
        parts.last().copied().unwrap_or(""),
    );
    format!("{a}{}{n}-az1", b.chars().next().unwrap_or('x'))
}

impl Service {
    /// `DescribeRegions`: the listed regions (plus the caller's own), or the named ones.
    pub fn describe_regions(
        &mut self,
        caller: &Caller,
        input: DescribeRegionsRequest,
    ) -> Result<DescribeRegionsResult> {
        filter::check_names(&input.filters, REGION_FILTERS)?;
        let names = &input.region_names;
        let mut regions: Vec<String> = DEFAULT_REGIONS.iter().map(|r| r.to_string()).collect();
        if !regions.contains(&caller.region) {
            regions.push(caller.region.clone());
        }
        for n in names {
            if !regions.contains(n) {
                return Err(Error::invalid_value(format!("Invalid region: {n}")));
            }
        }
        let regions = regions
            .iter()
            .filter(|r| names.is_empty() || names.contains(r))
            .map(|r| Region {
                endpoint: format!("ec2.{r}.amazonaws.com"),
                region_name: r.clone(),
                opt_in_status: "opt-in-not-required".into(),
            })
            .filter(|r| filter::matches(&input.filters, |n| filter::shown_values(r, n)))
            .collect();
        Ok(DescribeRegionsResult { regions })
    }

    /// `DescribeAvailabilityZones`: the caller's region has one zone, `<region>a`.
    pub fn describe_availability_zones(
        &mut self,
        caller: &Caller,
        input: DescribeAvailabilityZonesRequest,
    ) -> Result<DescribeAvailabilityZonesResult> {
        filter::check_names(&input.filters, ZONE_FILTERS)?;
        let zone = format!("{}a", caller.region);
        let id = zone_id(&caller.region);
        if let Some(n) = input.zone_names.iter().find(|n| **n != zone) {
            return Err(Error::invalid_value(format!(
                "The zone '{n}' does not exist in region {}; it has {zone}",
                caller.region
            )));
        }
        if let Some(n) = input.zone_ids.iter().find(|n| **n != id) {
            return Err(Error::invalid_value(format!(
                "The zone ID '{n}' does not exist in region {}; it has {id}",
                caller.region
            )));
        }
        let zones = vec![AvailabilityZone {
            state: "available".into(),
            opt_in_status: "opt-in-not-required".into(),
            messages: Vec::new(),
            region_name: caller.region.clone(),
            zone_name: zone,
            zone_id: id,
            group_name: caller.region.clone(),
            network_border_group: caller.region.clone(),
            zone_type: "availability-zone".into(),
        }];
        let availability_zones = zones
            .into_iter()
            .filter(|z| filter::matches(&input.filters, |n| filter::shown_values(z, n)))
            .collect();
        Ok(DescribeAvailabilityZonesResult { availability_zones })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn zone_ids_look_like_ec2s() {
        assert_eq!(super::zone_id("us-east-1"), "use1-az1");
        assert_eq!(super::zone_id("eu-west-2"), "euw2-az1");
        assert_eq!(super::zone_id("ap-southeast-1"), "aps1-az1");
    }
}
