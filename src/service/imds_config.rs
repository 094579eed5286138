//! What an instance's metadata service serves, gathered at boot.
//!
//! The supervisor answers IMDS without opening the database, so each boot
//! writes everything it needs ([`ImdsConfig`]) into the launch spec, and
//! the guest's `guestfwd` command relays to the supervisor's socket (see
//! [`crate::metadata::imds`], the server itself; this module only builds
//! its config).

use super::{Caller, Result, Service};
use crate::machine::ImdsForward;
use crate::metadata::imds::{ImdsConfig, PublicKey, RELAY_SUBCOMMAND};
use crate::store::InstanceState;
use base64::Engine;
use serde_json::Value;

/// Environment variable that, set to `0` when an instance is launched,
/// leaves out the NoCloud seed: the guest then learns about itself only
/// from the metadata service, as on EC2.
pub const NOCLOUD_SEED_ENV: &str = "AMIRUN_NOCLOUD_SEED";

impl Service {
    /// The metadata service of `i` for its next boot, and the command slirp
    /// runs per guest connection to 169.254.169.254:80.
    pub(crate) fn imds_for_boot(&mut self, i: &InstanceState) -> Result<(ImdsConfig, ImdsForward)> {
        let options = &i.metadata_options;
        let option = |k: &str, default: &str| {
            options
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_string()
        };
        let owner = Caller::new(i.owner_id.clone(), i.region.clone())?;
        // A key pair deleted since launch still shows on EC2; here it is gone.
        let public_keys = match &i.key_name {
            Some(k) => self
                .key_pair(&owner, k)
                .map(|kp| {
                    vec![PublicKey {
                        name: k.clone(),
                        openssh_key: kp.public_key,
                    }]
                })
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let mut block_devices = vec![
            ("ami".to_string(), i.root_device_name.clone()),
            ("root".to_string(), i.root_device_name.clone()),
        ];
        let mut ebs = 0;
        for d in &i.devices {
            if d.device_name == i.root_device_name {
                continue;
            }
            let short = d.device_name.trim_start_matches("/dev/").to_string();
            match (&d.volume_id, d.virtual_name.as_deref()) {
                (Some(_), _) => {
                    ebs += 1;
                    block_devices.push((format!("ebs{ebs}"), short));
                }
                (None, Some(v)) if v.starts_with("ephemeral") => {
                    block_devices.push((v.to_string(), short))
                }
                _ => {}
            }
        }
        let mut config = ImdsConfig {
            socket: self.paths.imds_socket(&i.instance_id),
            http_tokens: option("HttpTokens", "optional"),
            http_endpoint: option("HttpEndpoint", "enabled"),
            instance_id: i.instance_id.clone(),
            ami_id: i.image_id.clone(),
            instance_type: i.instance_type.clone(),
            account_id: i.owner_id.clone(),
            region: i.region.clone(),
            availability_zone: format!("{}a", i.region),
            reservation_id: i.reservation_id.clone(),
            launch_index: i.launch_index,
            architecture: i.architecture,
            pending_time: i.launch_time.clone(),
            hostname: "ip-169-254-0-15.ec2.internal".into(),
            local_ipv4: crate::machine::GUEST_ADDRESS.into(),
            mac: "52:54:00:12:34:56".into(),
            public_keys,
            user_data_base64: i
                .user_data
                .as_ref()
                .map(|u| base64::engine::general_purpose::STANDARD.encode(u)),
            block_devices,
            vpc: None,
        };
        // The guest's VPC interface, when it has one (service::network_interfaces).
        if let Some(v) = self.imds_network(&i.instance_id, &i.region)? {
            config.hostname = v.local_hostname.clone();
            config.local_ipv4 = v.local_ipv4.clone();
            // `mac` stays QEMU's default here: the boot sets the interface's
            // once it knows the guest joins the VPC's network (boot.rs).
            config.vpc = Some(v);
        }
        let exe = self
            .options
            .supervisor_exe
            .clone()
            .ok_or_else(|| super::Error::internal("Cannot find the amirun executable"))?;
        let forward = ImdsForward {
            argv: vec![
                exe.display().to_string(),
                RELAY_SUBCOMMAND.to_string(),
                config.socket.display().to_string(),
            ],
        };
        Ok((config, forward))
    }
}
