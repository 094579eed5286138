//! What an EBS volume needs beyond its `volumes` row: its provisioned
//! performance (IOPS, throughput), its last modification (ModifyVolume,
//! shown by DescribeVolumesModifications), and the intent of an attach or
//! detach to a running instance in flight (written before the supervisor
//! plugs or unplugs the disk, removed in the transaction that records the
//! result; recovery settles one whose writer died from whether the guest
//! has the disk).

use super::volumes::{volume_row, VOLUME_COLUMNS};
use super::{Db, Result, VolumeState};
use crate::domain::VolumeStateName;
use rusqlite::{params, OptionalExtension};

/// Provisioned IOPS and throughput of a volume (`None`: the type's baseline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VolumePerformance {
    pub iops: Option<u64>,
    pub throughput: Option<u64>,
}

/// A volume's last modification, in EC2's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeModificationState {
    pub volume_id: String,
    /// `modifying`, `optimizing`, `completed` or `failed`.
    pub state: String,
    pub status_message: Option<String>,
    pub original_size: u64,
    pub target_size: u64,
    pub original_type: String,
    pub target_type: String,
    pub original_iops: Option<u64>,
    pub target_iops: Option<u64>,
    pub original_throughput: Option<u64>,
    pub target_throughput: Option<u64>,
    pub start_time: String,
    pub end_time: Option<String>,
}

/// An attach or detach to a running instance in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachIntent {
    pub volume_id: String,
    pub instance_id: String,
    pub device: String,
    /// `attach` or `detach`.
    pub op: String,
    pub delete_on_termination: bool,
    pub started: String,
}

impl Db<'_> {
    /// Every volume in one state (recovery looks for `creating` and `deleting`).
    pub fn volumes_in_state(&self, state: VolumeStateName) -> Result<Vec<VolumeState>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {VOLUME_COLUMNS} FROM volumes WHERE state = ?1 ORDER BY volume_id"
        ))?;
        let rows = stmt.query_map([state], volume_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A volume's provisioned performance.
    pub fn volume_performance(&self, volume_id: &str) -> Result<VolumePerformance> {
        Ok(self
            .conn
            .query_row(
                "SELECT iops, throughput FROM volume_performance WHERE volume_id = ?1",
                [volume_id],
                |r| {
                    Ok(VolumePerformance {
                        iops: r.get(0)?,
                        throughput: r.get(1)?,
                    })
                },
            )
            .optional()?
            .unwrap_or_default())
    }

    /// Set a volume's provisioned performance.
    pub fn put_volume_performance(&self, volume_id: &str, p: VolumePerformance) -> Result<()> {
        self.conn.execute(
            "INSERT INTO volume_performance (volume_id, iops, throughput) VALUES (?1,?2,?3) \
             ON CONFLICT(volume_id) DO UPDATE SET iops = ?2, throughput = ?3",
            params![volume_id, p.iops, p.throughput],
        )?;
        Ok(())
    }

    /// Record a volume's (last) modification.
    pub fn put_volume_modification(&self, m: &VolumeModificationState) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO volume_modifications (volume_id, state, status_message, \
             original_size, target_size, original_type, target_type, original_iops, target_iops, \
             original_throughput, target_throughput, start_time, end_time) \
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)",
            params![
                m.volume_id,
                m.state,
                m.status_message,
                m.original_size,
                m.target_size,
                m.original_type,
                m.target_type,
                m.original_iops,
                m.target_iops,
                m.original_throughput,
                m.target_throughput,
                m.start_time,
                m.end_time,
            ],
        )?;
        Ok(())
    }

    /// Every recorded modification (one per volume, the last).
    pub fn volume_modifications(&self) -> Result<Vec<VolumeModificationState>> {
        let mut stmt = self.conn.prepare(
            "SELECT volume_id, state, status_message, original_size, target_size, original_type, \
             target_type, original_iops, target_iops, original_throughput, target_throughput, \
             start_time, end_time FROM volume_modifications ORDER BY start_time, volume_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(VolumeModificationState {
                volume_id: r.get(0)?,
                state: r.get(1)?,
                status_message: r.get(2)?,
                original_size: r.get(3)?,
                target_size: r.get(4)?,
                original_type: r.get(5)?,
                target_type: r.get(6)?,
                original_iops: r.get(7)?,
                target_iops: r.get(8)?,
                original_throughput: r.get(9)?,
                target_throughput: r.get(10)?,
                start_time: r.get(11)?,
                end_time: r.get(12)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Record an attach or detach about to happen.
    pub fn put_attach_intent(&self, i: &AttachIntent) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO volume_attach_intents \
             (volume_id, instance_id, device, op, delete_on_termination, started) \
             VALUES (?1,?2,?3,?4,?5,?6)",
            params![
                i.volume_id,
                i.instance_id,
                i.device,
                i.op,
                i.delete_on_termination,
                i.started
            ],
        )?;
        Ok(())
    }

    /// Every attach or detach intent left.
    pub fn attach_intents(&self) -> Result<Vec<AttachIntent>> {
        let mut stmt = self.conn.prepare(
            "SELECT volume_id, instance_id, device, op, delete_on_termination, started \
             FROM volume_attach_intents ORDER BY started",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(AttachIntent {
                volume_id: r.get(0)?,
                instance_id: r.get(1)?,
                device: r.get(2)?,
                op: r.get(3)?,
                delete_on_termination: r.get(4)?,
                started: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forget a volume's attach or detach intent.
    pub fn delete_attach_intent(&self, volume_id: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM volume_attach_intents WHERE volume_id = ?1",
            [volume_id],
        )?;
        Ok(())
    }

    /// Forget everything of this file about a volume (it is being deleted).
    pub(super) fn delete_volume_changes(&self, volume_id: &str) -> Result<()> {
        for table in [
            "volume_performance",
            "volume_modifications",
            "volume_attach_intents",
        ] {
            self.conn.execute(
                &format!("DELETE FROM {table} WHERE volume_id = ?1"),
                [volume_id],
            )?;
        }
        Ok(())
    }
}
