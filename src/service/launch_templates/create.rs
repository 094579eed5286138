//! `CreateLaunchTemplate` and `CreateLaunchTemplateVersion`: a template
//! with its version 1, and the next numbered version (from a source one).

use super::*;

/// `CreateLaunchTemplate`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CreateLaunchTemplateRequest {
    pub launch_template_name: String,
    #[serde(default)]
    pub version_description: Option<String>,
    pub launch_template_data: RequestLaunchTemplateData,
    #[serde(default)]
    pub tag_specifications: Vec<TagSpecification>,
    #[serde(default)]
    pub client_token: Option<String>,
}

/// `CreateLaunchTemplateVersion`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CreateLaunchTemplateVersionRequest {
    #[serde(default)]
    pub launch_template_id: Option<String>,
    #[serde(default)]
    pub launch_template_name: Option<String>,
    #[serde(default)]
    pub source_version: Option<String>,
    #[serde(default)]
    pub version_description: Option<String>,
    pub launch_template_data: RequestLaunchTemplateData,
    /// Honoured trivially: an ImageId must be an AMI id (`resolve:ssm:`
    /// aliases are refused), so there is never an alias to resolve.
    #[serde(default)]
    pub resolve_alias: Option<bool>,
    #[serde(default)]
    pub client_token: Option<String>,
}

/// `CreateLaunchTemplateVersion`'s result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateLaunchTemplateVersionResult {
    pub launch_template_version: LaunchTemplateVersion,
}

fn check_name(name: &str) -> Result<()> {
    let ok = (3..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"().-/_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidLaunchTemplateNameMalformed,
            format!(
                "The launch template name '{name}' is malformed: use 3 to 128 letters, digits and ( ) . - / _"
            ),
        ))
    }
}

fn description(d: &Option<String>) -> Result<()> {
    if d.as_ref().is_some_and(|d| d.len() > 255) {
        return Err(Error::invalid_value(
            "The version description is longer than 255 characters",
        ));
    }
    Ok(())
}

impl Service {
    /// `CreateLaunchTemplate`: the template and its version 1 (the default).
    pub fn create_launch_template(
        &mut self,
        caller: &Caller,
        req: CreateLaunchTemplateRequest,
    ) -> Result<LaunchTemplateResult> {
        check_name(&req.launch_template_name)?;
        description(&req.version_description)?;
        check_data(&req.launch_template_data)?;
        let tags = crate::service::images::tags_for(&req.tag_specifications, "launch-template")?;
        let created = now();
        // `ClientToken`: the template's id comes from it, so a repeat finds
        // what the first request made.
        let template_id = match &req.client_token {
            Some(token) => crate::service::client_token_id(IdKind::LaunchTemplate, caller, token)?,
            None => ids::new_id(IdKind::LaunchTemplate),
        };
        let t = LaunchTemplateState {
            launch_template_id: template_id,
            region: caller.region.clone(),
            owner_id: caller.account.to_string(),
            name: req.launch_template_name.clone(),
            create_time: created.clone(),
            created_by: format!("arn:aws:iam::{}:root", caller.account),
            default_version: 1,
            latest_version: 1,
        };
        let v = LaunchTemplateVersionState {
            launch_template_id: t.launch_template_id.clone(),
            version: 1,
            description: req.version_description.clone(),
            create_time: created,
            created_by: t.created_by.clone(),
            data: data_json(&req.launch_template_data),
        };
        let token = req.client_token.as_deref();
        let made = self.store.write(|db| -> Result<Option<LaunchTemplateState>> {
            // A repeated token: what the first request made, when it asked the same.
            if let (Some(token), Some(made)) = (token, db.launch_template(&t.launch_template_id)?) {
                let first = db.launch_template_versions(&made.launch_template_id)?;
                let same = made.owner_id == t.owner_id
                    && made.name == t.name
                    && first.iter().any(|x| x.version == 1 && x.data == v.data);
                return if same {
                    Ok(Some(made))
                } else {
                    Err(crate::service::idempotent_mismatch(token))
                };
            }
            // Checked inside the transaction: two creates of one name race here.
            if db
                .launch_templates_of(&t.region, &t.owner_id)?
                .iter()
                .any(|x| x.name == t.name)
            {
                return Err(Error::new(
                    ErrorCode::InvalidLaunchTemplateNameAlreadyExists,
                    format!(
                        "Launch template name already in use: '{}'; choose another name or add a version to it",
                        t.name
                    ),
                ));
            }
            db.put_launch_template(&t)?;
            db.put_launch_template_version(&v)?;
            for (k, val) in &tags {
                db.put_tag(&t.launch_template_id, k, val)?;
            }
            Ok(None)
        })?;
        Ok(LaunchTemplateResult {
            launch_template: self.template_shown(made.as_ref().unwrap_or(&t))?,
        })
    }

    /// `CreateLaunchTemplateVersion`: the next number; with `SourceVersion`,
    /// that version's data with the given members on top.
    pub fn create_launch_template_version(
        &mut self,
        caller: &Caller,
        req: CreateLaunchTemplateVersionRequest,
    ) -> Result<CreateLaunchTemplateVersionResult> {
        let t = self.find_template(
            caller,
            req.launch_template_id.as_deref(),
            req.launch_template_name.as_deref(),
        )?;
        description(&req.version_description)?;
        check_data(&req.launch_template_data)?;
        let mut data = match &req.source_version {
            Some(s) => self.find_version(&t, s)?.data,
            None => json!({}),
        };
        if let (Some(base), Value::Object(given)) =
            (data.as_object_mut(), data_json(&req.launch_template_data))
        {
            base.extend(given);
        }
        let id = t.launch_template_id.clone();
        let created_by = format!("arn:aws:iam::{}:root", caller.account);
        let description = req.version_description.clone();
        // `ClientToken`: the parameters' fingerprint, to tell a repeat
        // (the version the first request made) from a mismatch.
        let token = match &req.client_token {
            Some(token) => {
                crate::service::client_token_id(IdKind::LaunchTemplate, caller, token)?;
                Some(token.clone())
            }
            None => None,
        };
        let fingerprint = json!({
            "LaunchTemplateId": id,
            "SourceVersion": req.source_version,
            "VersionDescription": description,
            "LaunchTemplateData": data,
        })
        .to_string();
        let (t, v) = self.store.write(|db| -> Result<_> {
            if let Some(token) = &token {
                let first = db.client_token(
                    &caller.account,
                    &caller.region,
                    "CreateLaunchTemplateVersion",
                    token,
                )?;
                if let Some((made, print)) = first {
                    let version = made
                        .rsplit_once(':')
                        .and_then(|(_, n)| n.parse::<i64>().ok());
                    let existing = db
                        .launch_template_versions(&id)?
                        .into_iter()
                        .find(|x| Some(x.version) == version);
                    match existing {
                        Some(v) if print == fingerprint => {
                            let t = db.launch_template(&id)?.ok_or_else(|| id_not_found(&id))?;
                            return Ok((t, v));
                        }
                        _ if print != fingerprint => {
                            return Err(crate::service::idempotent_mismatch(token));
                        }
                        // The version is gone (deleted): a new one.
                        _ => {}
                    }
                }
            }
            // Numbered inside the transaction: concurrent versions queue.
            let mut t = db.launch_template(&id)?.ok_or_else(|| id_not_found(&id))?;
            t.latest_version += 1;
            let v = LaunchTemplateVersionState {
                launch_template_id: id.clone(),
                version: t.latest_version,
                description,
                create_time: now(),
                created_by,
                data,
            };
            db.put_launch_template(&t)?;
            db.put_launch_template_version(&v)?;
            if let Some(token) = &token {
                db.put_client_token(
                    &caller.account,
                    &caller.region,
                    "CreateLaunchTemplateVersion",
                    token,
                    &format!("{id}:{}", v.version),
                    &fingerprint,
                )?;
            }
            Ok((t, v))
        })?;
        Ok(CreateLaunchTemplateVersionResult {
            launch_template_version: Self::version_shown(&t, &v),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_ec2() {
        assert!(check_name("web-fleet_(v1)/a.b").is_ok());
        for bad in ["ab", "has space", &"x".repeat(129)] {
            assert_eq!(
                check_name(bad).unwrap_err().code(),
                ErrorCode::InvalidLaunchTemplateNameMalformed
            );
        }
    }
}
