//! `ModifyLaunchTemplate` (which version is the default),
//! `DeleteLaunchTemplate` and `DeleteLaunchTemplateVersions`.

use super::*;

/// `ModifyLaunchTemplate`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ModifyLaunchTemplateRequest {
    #[serde(default)]
    pub launch_template_id: Option<String>,
    #[serde(default)]
    pub launch_template_name: Option<String>,
    /// `SetDefaultVersion` on the wire (botocore's member name is DefaultVersion).
    #[serde(default)]
    pub default_version: Option<String>,
    #[serde(default)]
    pub client_token: Option<String>,
}

/// `DeleteLaunchTemplate`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DeleteLaunchTemplateRequest {
    #[serde(default)]
    pub launch_template_id: Option<String>,
    #[serde(default)]
    pub launch_template_name: Option<String>,
}

/// `DeleteLaunchTemplateVersions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DeleteLaunchTemplateVersionsRequest {
    #[serde(default)]
    pub launch_template_id: Option<String>,
    #[serde(default)]
    pub launch_template_name: Option<String>,
    pub versions: Vec<String>,
}

/// A version that was deleted.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeletedVersion {
    pub launch_template_id: String,
    pub launch_template_name: String,
    pub version_number: i64,
}

/// Why a version was not deleted (`ResponseError`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResponseError {
    pub code: String,
    pub message: String,
}

/// A version that was not deleted.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct UndeletedVersion {
    pub launch_template_id: String,
    pub launch_template_name: String,
    pub version_number: i64,
    pub response_error: ResponseError,
}

/// `DeleteLaunchTemplateVersions`' result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteLaunchTemplateVersionsResult {
    pub successfully_deleted_launch_template_versions: Vec<DeletedVersion>,
    pub unsuccessfully_deleted_launch_template_versions: Vec<UndeletedVersion>,
}

impl Service {
    /// `ModifyLaunchTemplate`: which version is the default.
    pub fn modify_launch_template(
        &mut self,
        caller: &Caller,
        req: ModifyLaunchTemplateRequest,
    ) -> Result<LaunchTemplateResult> {
        let mut t = self.find_template(
            caller,
            req.launch_template_id.as_deref(),
            req.launch_template_name.as_deref(),
        )?;
        if let Some(d) = &req.default_version {
            let v = self.find_version(&t, d)?;
            let (id, n) = (t.launch_template_id.clone(), v.version);
            t = self.store.write(|db| -> Result<_> {
                let mut t = db.launch_template(&id)?.ok_or_else(|| id_not_found(&id))?;
                t.default_version = n;
                db.put_launch_template(&t)?;
                Ok(t)
            })?;
        }
        Ok(LaunchTemplateResult {
            launch_template: self.template_shown(&t)?,
        })
    }

    /// `DeleteLaunchTemplate`: the template and every version.
    pub fn delete_launch_template(
        &mut self,
        caller: &Caller,
        req: DeleteLaunchTemplateRequest,
    ) -> Result<LaunchTemplateResult> {
        let t = self.find_template(
            caller,
            req.launch_template_id.as_deref(),
            req.launch_template_name.as_deref(),
        )?;
        let shown = self.template_shown(&t)?;
        self.store
            .write(|db| db.delete_launch_template(&t.launch_template_id))?;
        Ok(LaunchTemplateResult {
            launch_template: shown,
        })
    }

    /// `DeleteLaunchTemplateVersions`: each version deleted or said why
    /// not; never the default one.
    pub fn delete_launch_template_versions(
        &mut self,
        caller: &Caller,
        req: DeleteLaunchTemplateVersionsRequest,
    ) -> Result<DeleteLaunchTemplateVersionsResult> {
        let t = self.find_template(
            caller,
            req.launch_template_id.as_deref(),
            req.launch_template_name.as_deref(),
        )?;
        if req.versions.is_empty() {
            return Err(Error::missing("LaunchTemplateVersion"));
        }
        if req.versions.len() > 200 {
            return Err(Error::invalid_value(
                "At most 200 versions can be deleted in one request; delete the launch template to delete them all",
            ));
        }
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        let id = t.launch_template_id.clone();
        self.store.write(|db| -> Result<()> {
            let t = db.launch_template(&id)?.ok_or_else(|| id_not_found(&id))?;
            for v in &req.versions {
                let fail = |n: i64, code: &str, message: String| UndeletedVersion {
                    launch_template_id: t.launch_template_id.clone(),
                    launch_template_name: t.name.clone(),
                    version_number: n,
                    response_error: ResponseError {
                        code: code.into(),
                        message,
                    },
                };
                let Ok(n) = v.parse::<i64>() else {
                    failed.push(fail(
                        0,
                        "launchTemplateVersionDoesNotExist",
                        format!("'{v}' is not a version number"),
                    ));
                    continue;
                };
                if n == t.default_version {
                    failed.push(fail(
                        n,
                        "unexpectedError",
                        format!(
                            "Cannot delete the default version {n} of {}; make another version the default first, or delete the launch template",
                            t.launch_template_id
                        ),
                    ));
                } else if db.delete_launch_template_version(&t.launch_template_id, n)? {
                    ok.push(DeletedVersion {
                        launch_template_id: t.launch_template_id.clone(),
                        launch_template_name: t.name.clone(),
                        version_number: n,
                    });
                } else {
                    failed.push(fail(
                        n,
                        "launchTemplateVersionDoesNotExist",
                        format!("Version {n} of {} does not exist", t.launch_template_id),
                    ));
                }
            }
            Ok(())
        })?;
        Ok(DeleteLaunchTemplateVersionsResult {
            successfully_deleted_launch_template_versions: ok,
            unsuccessfully_deleted_launch_template_versions: failed,
        })
    }
}
