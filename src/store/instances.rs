//! Instance records: the `instances` table, the launch facts and the last
//! state amirun recorded (the service reconciles it with live facts on
//! every read), with the attached devices as a JSON column.

use super::{to_json, upsert_set, Db, Result};
use crate::domain::{
    Accel, Architecture, BootMode, InstanceStateName, RootDeviceType, ShutdownBehavior,
};
use rusqlite::{params, Row};
use serde::{Deserialize, Serialize};

/// One disk attached to an instance, as recorded at launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceDevice {
    /// EC2 device name (`/dev/xvda`, `/dev/sdb`).
    pub device_name: String,
    /// EBS volume id; `None` for instance-store disks.
    pub volume_id: Option<String>,
    /// `ephemeralN` / root for instance-store disks.
    pub virtual_name: Option<String>,
    /// Size in GiB.
    pub size_gib: u64,
    /// Whether terminate deletes the volume.
    pub delete_on_termination: bool,
    /// When it was attached.
    pub attach_time: String,
}

/// A stored instance: its launch facts and the last state amirun recorded.
/// The state shown to users is reconciled with live facts on every read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceState {
    pub instance_id: String,
    pub region: String,
    pub owner_id: String,
    pub reservation_id: String,
    pub image_id: String,
    pub instance_type: String,
    pub architecture: Architecture,
    pub boot_mode: BootMode,
    pub root_device_type: RootDeviceType,
    pub root_device_name: String,
    /// EC2 state name: pending, running, stopping, stopped, shutting-down, terminated.
    pub state: InstanceStateName,
    /// `Code: message` of the last transition (EC2's StateReason).
    pub state_reason: Option<String>,
    pub state_transition_reason: Option<String>,
    pub launch_time: String,
    pub key_name: Option<String>,
    pub user_data: Option<Vec<u8>>,
    /// `stop` or `terminate`.
    pub shutdown_behavior: ShutdownBehavior,
    /// `kvm` or `tcg`.
    pub accel: Accel,
    pub accel_reason: String,
    pub ssh_port: Option<u16>,
    pub imds_port: Option<u16>,
    pub launch_index: u32,
    /// EC2 MetadataOptions as JSON.
    pub metadata_options: serde_json::Value,
    /// Hibernation as JSON (`service::hibernation` reads it); `Null` when
    /// the instance was not launched for hibernation.
    pub hibernation: serde_json::Value,
    pub devices: Vec<InstanceDevice>,
    /// When the record last changed.
    pub updated: String,
}

const INSTANCE_COLUMNS: &str = "instance_id, region, owner_id, reservation_id, image_id, \
    instance_type, architecture, boot_mode, root_device_type, root_device_name, state, \
    state_reason, state_transition_reason, launch_time, key_name, user_data, shutdown_behavior, \
    accel, accel_reason, ssh_port, imds_port, launch_index, metadata_options, devices, updated, hibernation";

struct InstanceRow(InstanceState, String, String, Option<String>);

fn instance_row(r: &Row) -> rusqlite::Result<InstanceRow> {
    Ok(InstanceRow(
        InstanceState {
            instance_id: r.get(0)?,
            region: r.get(1)?,
            owner_id: r.get(2)?,
            reservation_id: r.get(3)?,
            image_id: r.get(4)?,
            instance_type: r.get(5)?,
            architecture: r.get(6)?,
            boot_mode: r.get(7)?,
            root_device_type: r.get(8)?,
            root_device_name: r.get(9)?,
            state: r.get(10)?,
            state_reason: r.get(11)?,
            state_transition_reason: r.get(12)?,
            launch_time: r.get(13)?,
            key_name: r.get(14)?,
            user_data: r.get(15)?,
            shutdown_behavior: r.get(16)?,
            accel: r.get(17)?,
            accel_reason: r.get(18)?,
            ssh_port: r.get(19)?,
            imds_port: r.get(20)?,
            launch_index: r.get(21)?,
            metadata_options: serde_json::Value::Null,
            hibernation: serde_json::Value::Null,
            devices: Vec::new(),
            updated: r.get(24)?,
        },
        r.get(22)?,
        r.get(23)?,
        r.get(25)?,
    ))
}

impl InstanceRow {
    fn parse(self) -> Result<InstanceState> {
        let InstanceRow(mut i, meta, devices, hibernation) = self;
        if let Some(h) = hibernation {
            i.hibernation = serde_json::from_str(&h)?;
        }
        i.metadata_options = serde_json::from_str(&meta)?;
        i.devices = serde_json::from_str(&devices)?;
        Ok(i)
    }
}

impl Db<'_> {
    /// Insert or update an instance.
    pub fn put_instance(&self, i: &InstanceState) -> Result<()> {
        self.conn.execute(
            &format!(
                "INSERT INTO instances ({INSTANCE_COLUMNS}) VALUES \
                 (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,?22,?23,?24,?25,?26) \
                 ON CONFLICT(instance_id) DO UPDATE SET {}",
                upsert_set(INSTANCE_COLUMNS)
            ),
            params![
                i.instance_id,
                i.region,
                i.owner_id,
                i.reservation_id,
                i.image_id,
                i.instance_type,
                i.architecture,
                i.boot_mode,
                i.root_device_type,
                i.root_device_name,
                i.state,
                i.state_reason,
                i.state_transition_reason,
                i.launch_time,
                i.key_name,
                i.user_data,
                i.shutdown_behavior,
                i.accel,
                i.accel_reason,
                i.ssh_port,
                i.imds_port,
                i.launch_index,
                to_json(&i.metadata_options)?,
                to_json(&i.devices)?,
                i.updated,
                (!i.hibernation.is_null())
                    .then(|| to_json(&i.hibernation))
                    .transpose()?,
            ],
        )?;
        Ok(())
    }

    /// One instance by id, in any region.
    pub fn instance(&self, instance_id: &str) -> Result<Option<InstanceState>> {
        Ok(self
            .instances_where("instance_id = ?1", [instance_id])?
            .pop())
    }

    /// All instances of a region, in launch order.
    pub fn instances_in_region(&self, region: &str) -> Result<Vec<InstanceState>> {
        self.instances_where(
            "region = ?1 ORDER BY launch_time, launch_index, instance_id",
            [region],
        )
    }

    /// Every instance not yet terminated, in any region (for reconciliation).
    pub fn live_instances(&self) -> Result<Vec<InstanceState>> {
        self.instances_where("state != 'terminated'", [])
    }

    /// Instances matching a `WHERE` clause (written here, never from user input).
    fn instances_where(
        &self,
        clause: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<InstanceState>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE {clause}"
        ))?;
        let rows = stmt.query_map(params, instance_row)?;
        rows.map(|r| r?.parse()).collect()
    }

    /// Ports recorded for instances that are not terminated.
    pub fn ports_in_use(&self) -> Result<Vec<u16>> {
        let mut stmt = self.conn.prepare(
            "SELECT ssh_port FROM instances WHERE state != 'terminated' AND ssh_port IS NOT NULL \
             UNION SELECT imds_port FROM instances WHERE state != 'terminated' AND imds_port IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forget terminated instances older than `before` (EC2 shows them for about an hour).
    pub fn purge_terminated(&self, before: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT instance_id FROM instances WHERE state = 'terminated' AND updated < ?1",
        )?;
        let ids: Vec<String> = stmt
            .query_map([before], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for id in &ids {
            self.delete_tags_of(id)?;
            self.conn
                .execute("DELETE FROM instances WHERE instance_id = ?1", [id])?;
        }
        Ok(ids)
    }

    /// Ids of every instance record.
    pub fn instance_id_set(&self) -> Result<std::collections::HashSet<String>> {
        self.id_set("SELECT instance_id FROM instances")
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::temp_store;
    use super::*;

    fn instance(id: &str, state: InstanceStateName, updated: &str) -> InstanceState {
        InstanceState {
            instance_id: id.into(),
            region: "us-east-1".into(),
            owner_id: "000000000000".into(),
            reservation_id: "r-1".into(),
            image_id: "ami-1".into(),
            instance_type: "t3.micro".into(),
            architecture: Architecture::Arm64,
            boot_mode: BootMode::Uefi,
            root_device_type: RootDeviceType::Ebs,
            root_device_name: "/dev/xvda".into(),
            state,
            state_reason: None,
            state_transition_reason: Some("User initiated".into()),
            launch_time: "2026-01-01T00:00:00.000Z".into(),
            key_name: Some("k".into()),
            user_data: Some(b"#!/bin/sh\n".to_vec()),
            shutdown_behavior: ShutdownBehavior::Terminate,
            accel: Accel::Tcg,
            accel_reason: "no KVM".into(),
            ssh_port: Some(2222),
            imds_port: Some(8080),
            launch_index: 0,
            metadata_options: serde_json::json!({"HttpTokens": "required"}),
            hibernation: serde_json::Value::Null,
            devices: vec![InstanceDevice {
                device_name: "/dev/xvda".into(),
                volume_id: Some("vol-1".into()),
                virtual_name: None,
                size_gib: 8,
                delete_on_termination: true,
                attach_time: "2026-01-01T00:00:00.000Z".into(),
            }],
            updated: updated.into(),
        }
    }

    #[test]
    fn instances_round_trip_ports_and_purge() {
        let (_dir, mut store) = temp_store();
        let running = instance("i-1", InstanceStateName::Running, "2026-01-02");
        let gone = instance("i-2", InstanceStateName::Terminated, "2026-01-01");
        store
            .write(|db| {
                db.put_instance(&running)?;
                db.put_instance(&gone)?;
                db.put_tag("i-2", "Name", "x")
            })
            .unwrap();
        assert_eq!(
            store.read(|db| db.instance("i-1")).unwrap(),
            Some(running.clone())
        );
        assert_eq!(store.read(|db| db.live_instances()).unwrap(), vec![running]);
        let mut ports = store.read(|db| db.ports_in_use()).unwrap();
        ports.sort();
        assert_eq!(ports, vec![2222, 8080]);
        let purged = store.write(|db| db.purge_terminated("2026-01-02")).unwrap();
        assert_eq!(purged, vec!["i-2".to_string()]);
        assert!(store.read(|db| db.tags_of("i-2")).unwrap().is_empty());
        let ids = store.read(|db| db.instance_id_set()).unwrap();
        assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec!["i-1".to_string()]);
    }
}
