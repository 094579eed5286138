//! Launch templates and their numbered versions: the template row holds
//! the name and which version is the default and the latest; each version
//! holds its `LaunchTemplateData` exactly as the caller gave it (JSON with
//! botocore's member names), so what DescribeLaunchTemplateVersions shows
//! is what was stored and launch-time checks see the caller's own words.

use super::{Db, Result};
use rusqlite::{params, OptionalExtension, Row};

/// A stored launch template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchTemplateState {
    pub launch_template_id: String,
    pub region: String,
    pub owner_id: String,
    pub name: String,
    pub create_time: String,
    /// `arn:aws:iam::<account>:root`, as EC2 shows it.
    pub created_by: String,
    pub default_version: i64,
    pub latest_version: i64,
}

/// One stored version of a launch template.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchTemplateVersionState {
    pub launch_template_id: String,
    pub version: i64,
    pub description: Option<String>,
    pub create_time: String,
    pub created_by: String,
    /// `LaunchTemplateData` as given.
    pub data: serde_json::Value,
}

const TEMPLATE_COLUMNS: &str = "launch_template_id, region, owner_id, name, create_time, \
    created_by, default_version, latest_version";

fn template_row(r: &Row) -> rusqlite::Result<LaunchTemplateState> {
    Ok(LaunchTemplateState {
        launch_template_id: r.get(0)?,
        region: r.get(1)?,
        owner_id: r.get(2)?,
        name: r.get(3)?,
        create_time: r.get(4)?,
        created_by: r.get(5)?,
        default_version: r.get(6)?,
        latest_version: r.get(7)?,
    })
}

impl Db<'_> {
    /// Insert or update a launch template row.
    pub fn put_launch_template(&self, t: &LaunchTemplateState) -> Result<()> {
        self.conn.execute(
            &format!(
                "INSERT INTO launch_templates ({TEMPLATE_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8) \
                 ON CONFLICT(launch_template_id) DO UPDATE SET default_version = ?7, latest_version = ?8"
            ),
            params![
                t.launch_template_id,
                t.region,
                t.owner_id,
                t.name,
                t.create_time,
                t.created_by,
                t.default_version,
                t.latest_version,
            ],
        )?;
        Ok(())
    }

    /// One launch template by id.
    pub fn launch_template(&self, id: &str) -> Result<Option<LaunchTemplateState>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {TEMPLATE_COLUMNS} FROM launch_templates WHERE launch_template_id = ?1"
                ),
                [id],
                template_row,
            )
            .optional()?)
    }

    /// The launch templates of an account in a region, oldest first.
    pub fn launch_templates_of(
        &self,
        region: &str,
        owner_id: &str,
    ) -> Result<Vec<LaunchTemplateState>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {TEMPLATE_COLUMNS} FROM launch_templates WHERE region = ?1 AND owner_id = ?2 \
             ORDER BY create_time, launch_template_id"
        ))?;
        let rows = stmt.query_map([region, owner_id], template_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Delete a launch template, its versions and its tags.
    pub fn delete_launch_template(&self, id: &str) -> Result<()> {
        self.delete_tags_of(id)?;
        self.conn.execute(
            "DELETE FROM launch_template_versions WHERE launch_template_id = ?1",
            [id],
        )?;
        self.conn.execute(
            "DELETE FROM launch_templates WHERE launch_template_id = ?1",
            [id],
        )?;
        Ok(())
    }

    /// Insert a version.
    pub fn put_launch_template_version(&self, v: &LaunchTemplateVersionState) -> Result<()> {
        self.conn.execute(
            "INSERT INTO launch_template_versions \
             (launch_template_id, version, description, create_time, created_by, data) \
             VALUES (?1,?2,?3,?4,?5,?6)",
            params![
                v.launch_template_id,
                v.version,
                v.description,
                v.create_time,
                v.created_by,
                serde_json::to_string(&v.data)?,
            ],
        )?;
        Ok(())
    }

    /// Every version of a template, in version order.
    pub fn launch_template_versions(&self, id: &str) -> Result<Vec<LaunchTemplateVersionState>> {
        let mut stmt = self.conn.prepare(
            "SELECT launch_template_id, version, description, create_time, created_by, data \
             FROM launch_template_versions WHERE launch_template_id = ?1 ORDER BY version",
        )?;
        let rows = stmt.query_map([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (launch_template_id, version, description, create_time, created_by, data) = row?;
            out.push(LaunchTemplateVersionState {
                launch_template_id,
                version,
                description,
                create_time,
                created_by,
                data: serde_json::from_str(&data)?,
            });
        }
        Ok(out)
    }

    /// Delete one version; whether it existed.
    pub fn delete_launch_template_version(&self, id: &str, version: i64) -> Result<bool> {
        let n = self.conn.execute(
            "DELETE FROM launch_template_versions WHERE launch_template_id = ?1 AND version = ?2",
            params![id, version],
        )?;
        Ok(n > 0)
    }

    /// What a request with this idempotency token made (`made`) and the
    /// fingerprint of its parameters, if one came before.
    pub fn client_token(
        &self,
        account: &str,
        region: &str,
        action: &str,
        token: &str,
    ) -> Result<Option<(String, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT made, fingerprint FROM client_tokens \
                 WHERE account = ?1 AND region = ?2 AND action = ?3 AND token = ?4",
                params![account, region, action, token],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Record what a request with an idempotency token made.
    pub fn put_client_token(
        &self,
        account: &str,
        region: &str,
        action: &str,
        token: &str,
        made: &str,
        fingerprint: &str,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO client_tokens \
             (account, region, action, token, made, fingerprint) VALUES (?1,?2,?3,?4,?5,?6)",
            params![account, region, action, token, made, fingerprint],
        )?;
        Ok(())
    }
}
