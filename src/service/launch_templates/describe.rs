//! `DescribeLaunchTemplates` and `DescribeLaunchTemplateVersions`, with
//! EC2's filters.

use super::*;

/// `DescribeLaunchTemplates`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeLaunchTemplatesRequest {
    #[serde(default)]
    pub launch_template_ids: Vec<String>,
    #[serde(default)]
    pub launch_template_names: Vec<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub max_results: Option<i64>,
}

/// `DescribeLaunchTemplateVersions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeLaunchTemplateVersionsRequest {
    #[serde(default)]
    pub launch_template_id: Option<String>,
    #[serde(default)]
    pub launch_template_name: Option<String>,
    #[serde(default)]
    pub versions: Vec<String>,
    #[serde(default)]
    pub min_version: Option<String>,
    #[serde(default)]
    pub max_version: Option<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub max_results: Option<i64>,
    /// Honoured trivially: an ImageId must be an AMI id (`resolve:ssm:`
    /// aliases are refused), so there is never an alias to resolve.
    #[serde(default)]
    pub resolve_alias: Option<bool>,
}

/// `DescribeLaunchTemplates`' result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeLaunchTemplatesResult {
    pub launch_templates: Vec<LaunchTemplate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `DescribeLaunchTemplateVersions`' result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeLaunchTemplateVersionsResult {
    pub launch_template_versions: Vec<LaunchTemplateVersion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

const TEMPLATE_FILTERS: &[&str] = &["create-time", "launch-template-name", "tag-key"];
const VERSION_FILTERS: &[&str] = &[
    "create-time",
    "ebs-optimized",
    "image-id",
    "instance-type",
    "is-default-version",
    "kernel-id",
    "ram-disk-id",
];

impl Service {
    /// `DescribeLaunchTemplates`.
    pub fn describe_launch_templates(
        &mut self,
        caller: &Caller,
        req: DescribeLaunchTemplatesRequest,
    ) -> Result<DescribeLaunchTemplatesResult> {
        let paging = Paging::of(req.max_results, &req.next_token);
        for id in &req.launch_template_ids {
            check_template_id(id)?;
        }
        filter::check_names(&req.filters, TEMPLATE_FILTERS)?;
        let all = self
            .store
            .read(|db| db.launch_templates_of(&caller.region, &caller.account))?;
        for id in &req.launch_template_ids {
            if !all.iter().any(|t| &t.launch_template_id == id) {
                return Err(id_not_found(id));
            }
        }
        for name in &req.launch_template_names {
            if !all.iter().any(|t| &t.name == name) {
                return Err(name_not_found(name));
            }
        }
        let mut out = Vec::new();
        for t in all {
            if !req.launch_template_ids.is_empty()
                && !req.launch_template_ids.contains(&t.launch_template_id)
            {
                continue;
            }
            if !req.launch_template_names.is_empty() && !req.launch_template_names.contains(&t.name)
            {
                continue;
            }
            let tags = self.store.read(|db| db.tags_of(&t.launch_template_id))?;
            let keep = filter::matches(&req.filters, |name| match name {
                "create-time" => vec![t.create_time.clone()],
                "launch-template-name" => vec![t.name.clone()],
                n => filter::tag_values(&tags, n).unwrap_or_default(),
            });
            if keep {
                out.push(self.template_shown(&t)?);
            }
        }
        let (launch_templates, next_token) = crate::service::paging::page(out, &paging, 1, 200)?;
        Ok(DescribeLaunchTemplatesResult {
            launch_templates,
            next_token,
        })
    }

    /// `DescribeLaunchTemplateVersions`: newest first.
    pub fn describe_launch_template_versions(
        &mut self,
        caller: &Caller,
        req: DescribeLaunchTemplateVersionsRequest,
    ) -> Result<DescribeLaunchTemplateVersionsResult> {
        let paging = Paging::of(req.max_results, &req.next_token);
        filter::check_names(&req.filters, VERSION_FILTERS)?;
        let templates = if req.launch_template_id.is_none() && req.launch_template_name.is_none() {
            // EC2 allows this only for $Latest / $Default across templates.
            if req.versions.is_empty()
                || req
                    .versions
                    .iter()
                    .any(|v| v != "$Latest" && v != "$Default")
            {
                return Err(Error::missing("LaunchTemplateId or LaunchTemplateName"));
            }
            self.store
                .read(|db| db.launch_templates_of(&caller.region, &caller.account))?
        } else {
            vec![self.find_template(
                caller,
                req.launch_template_id.as_deref(),
                req.launch_template_name.as_deref(),
            )?]
        };
        let bound = |t: &LaunchTemplateState, b: &Option<String>| -> Result<Option<i64>> {
            b.as_deref()
                .map(|s| match s {
                    "$Latest" => Ok(t.latest_version),
                    "$Default" => Ok(t.default_version),
                    n => n.parse::<i64>().map_err(|_| {
                        Error::invalid_value(format!("Invalid version bound '{n}': use a number"))
                    }),
                })
                .transpose()
        };
        let mut out = Vec::new();
        for t in &templates {
            let (min, max) = (bound(t, &req.min_version)?, bound(t, &req.max_version)?);
            let mut wanted: Vec<i64> = Vec::new();
            for v in &req.versions {
                wanted.push(match v.as_str() {
                    "$Latest" => t.latest_version,
                    "$Default" => t.default_version,
                    n => n.parse::<i64>().map_err(|_| version_not_found(t, n))?,
                });
            }
            let versions = self
                .store
                .read(|db| db.launch_template_versions(&t.launch_template_id))?;
            for w in &wanted {
                if !versions.iter().any(|v| v.version == *w) {
                    return Err(version_not_found(t, &w.to_string()));
                }
            }
            for v in versions.iter().rev() {
                if !wanted.is_empty() && !wanted.contains(&v.version) {
                    continue;
                }
                if min.is_some_and(|m| v.version < m) || max.is_some_and(|m| v.version > m) {
                    continue;
                }
                let s = |k: &str| v.data.get(k).and_then(Value::as_str).map(String::from);
                let keep = filter::matches(&req.filters, |name| match name {
                    "create-time" => vec![v.create_time.clone()],
                    "ebs-optimized" => vec![v
                        .data
                        .get("EbsOptimized")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                        .to_string()],
                    "image-id" => s("ImageId").into_iter().collect(),
                    "instance-type" => s("InstanceType").into_iter().collect(),
                    "is-default-version" => vec![(v.version == t.default_version).to_string()],
                    "kernel-id" => s("KernelId").into_iter().collect(),
                    "ram-disk-id" => s("RamDiskId").into_iter().collect(),
                    _ => Vec::new(),
                });
                if keep {
                    out.push(Self::version_shown(t, v));
                }
            }
        }
        let (launch_template_versions, next_token) =
            crate::service::paging::page(out, &paging, 1, 200)?;
        Ok(DescribeLaunchTemplateVersionsResult {
            launch_template_versions,
            next_token,
        })
    }
}
