//! What a version holds: `RequestLaunchTemplateData` and its members, the
//! syntax checks EC2 makes when a version is created, and the data as kept.

use super::*;

/// `LaunchTemplateTagSpecificationRequest`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LaunchTemplateTagSpecificationRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

/// `LaunchTemplateEbsBlockDeviceRequest`: what amirun's volumes honour.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LaunchTemplateEbsBlockDeviceRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_on_termination: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<u64>,
}

/// `LaunchTemplateBlockDeviceMappingRequest`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LaunchTemplateBlockDeviceMappingRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebs: Option<LaunchTemplateEbsBlockDeviceRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_device: Option<String>,
}

/// `LaunchTemplateHibernationOptionsRequest`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LaunchTemplateHibernationOptionsRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configured: Option<bool>,
}

/// `RequestLaunchTemplateData`: the members amirun keeps. Anything else is
/// refused (UnknownParameter), never dropped.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct RequestLaunchTemplateData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// Base64, as RunInstances takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tag_specifications: Vec<LaunchTemplateTagSpecificationRequest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_device_mappings: Vec<LaunchTemplateBlockDeviceMappingRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_options: Option<crate::service::instances::InstanceMetadataOptionsRequest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_group_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_initiated_shutdown_behavior: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernation_options: Option<LaunchTemplateHibernationOptionsRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebs_optimized: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_api_termination: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_api_stop: Option<bool>,
}

/// The syntax checks EC2 makes when a version is created (ids are checked
/// at launch).
pub(super) fn check_data(data: &RequestLaunchTemplateData) -> Result<()> {
    if let Some(id) = &data.image_id {
        crate::service::check_image_id(id)?;
    }
    if let Some(t) = &data.instance_type {
        if crate::machine::instance_type(t).is_none() {
            return Err(Error::invalid_value(format!(
                "Invalid value '{t}' for InstanceType."
            )));
        }
    }
    if let Some(u) = &data.user_data {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(u.trim())
            .map_err(|e| {
                Error::invalid_value("Invalid BASE64 encoding of UserData").with_source(e)
            })?;
    }
    if let Some(b) = &data.instance_initiated_shutdown_behavior {
        if b.parse::<crate::domain::ShutdownBehavior>().is_err() {
            return Err(Error::invalid_value(format!(
                "Value ({b}) for parameter InstanceInitiatedShutdownBehavior is invalid; use stop or terminate"
            )));
        }
    }
    for m in &data.block_device_mappings {
        let device = m.device_name.as_deref().ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidBlockDeviceMapping,
                "A block device mapping of the launch template has no DeviceName",
            )
        })?;
        if device != "/dev/xvda" && device != "/dev/sda1" {
            check_device_name(device).map_err(|_| {
                Error::new(
                    ErrorCode::InvalidBlockDeviceMapping,
                    format!("Invalid device name {device}"),
                )
            })?;
        }
        if let Some(s) = m.ebs.as_ref().and_then(|e| e.snapshot_id.as_ref()) {
            crate::service::check_snapshot_id(s)?;
        }
    }
    for s in &data.tag_specifications {
        match s.resource_type.as_deref() {
            Some("instance" | "volume" | "network-interface" | "spot-instances-request") | None => {
            }
            Some(other) => {
                return Err(Error::invalid_value(format!(
                    "'{other}' is not a valid taggable resource type for a launch template; use instance, volume, network-interface or spot-instances-request"
                )))
            }
        }
    }
    Ok(())
}

pub(super) fn data_json(data: &RequestLaunchTemplateData) -> Value {
    serde_json::to_value(data).expect("launch template data serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_checked_for_syntax_only() {
        let data: RequestLaunchTemplateData = crate::api::request(&json!({
            "ImageId": "ami-0123456789abcdef0",
            "InstanceType": "t3.micro",
            "UserData": "IyEvYmluL3NoCg==",
        }))
        .unwrap();
        // A well-formed id that exists nowhere is fine until launch.
        assert!(check_data(&data).is_ok());
        let bad = |v: Value| check_data(&crate::api::request(&v).unwrap()).unwrap_err();
        assert_eq!(
            bad(json!({"InstanceType": "t9.huge"})).code(),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            bad(json!({"ImageId": "ami-nope"})).code(),
            ErrorCode::InvalidAmiIdMalformed
        );
        assert_eq!(
            bad(json!({"UserData": "%%%"})).code(),
            ErrorCode::InvalidParameterValue
        );
        let e = crate::api::request::<RequestLaunchTemplateData>(&json!({"Monitoring": {}}))
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnknownParameter);
        let e = crate::api::request::<RequestLaunchTemplateData>(&json!({
            "BlockDeviceMappings": [{"DeviceName": "/dev/sdf", "Ebs": {"KmsKeyId": "k"}}]
        }))
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnknownParameter);
        assert!(e.message().contains("KmsKeyId"), "{}", e.message());
    }
}
