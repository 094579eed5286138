//! Regions and availability zones: what SDKs and Terraform's AWS provider
//! ask first. Every region name is usable; the usual commercial ones are
//! listed, each with one zone (`<region>a`), where instances are placed.

use super::{Caller, Error, Result, Service};
use crate::catalog::DEFAULT_REGIONS;
use serde_json::{json, Value};

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
    pub fn describe_regions(&mut self, caller: &Caller, names: &[String]) -> Result<Value> {
        let mut regions: Vec<String> = DEFAULT_REGIONS.iter().map(|r| r.to_string()).collect();
        if !regions.contains(&caller.region) {
            regions.push(caller.region.clone());
        }
        for n in names {
            if !regions.contains(n) {
                return Err(Error::invalid_value(format!("Invalid region: {n}")));
            }
        }
        let shown: Vec<Value> = regions
            .iter()
            .filter(|r| names.is_empty() || names.contains(r))
            .map(|r| {
                json!({
                    "Endpoint": format!("ec2.{r}.amazonaws.com"),
                    "RegionName": r,
                    "OptInStatus": "opt-in-not-required",
                })
            })
            .collect();
        Ok(json!({ "Regions": shown }))
    }

    /// `DescribeAvailabilityZones`: the caller's region has one zone, `<region>a`.
    pub fn describe_availability_zones(
        &mut self,
        caller: &Caller,
        names: &[String],
    ) -> Result<Value> {
        let zone = format!("{}a", caller.region);
        if let Some(n) = names.iter().find(|n| **n != zone) {
            return Err(Error::invalid_value(format!(
                "The zone '{n}' does not exist in region {}; it has {zone}",
                caller.region
            )));
        }
        Ok(json!({ "AvailabilityZones": [{
            "State": "available",
            "OptInStatus": "opt-in-not-required",
            "Messages": [],
            "RegionName": caller.region,
            "ZoneName": zone,
            "ZoneId": zone_id(&caller.region),
            "GroupName": caller.region,
            "NetworkBorderGroup": caller.region,
            "ZoneType": "availability-zone",
        }]}))
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
