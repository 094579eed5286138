//! How RunInstances starts from a template: the version's data with the
//! request's own members on top, instances tagged with the template.

use super::*;

/// `LaunchTemplateSpecification` (RunInstances' `LaunchTemplate`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LaunchTemplateSpecification {
    #[serde(default)]
    pub launch_template_id: Option<String>,
    #[serde(default)]
    pub launch_template_name: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
}

/// The tag keys EC2 puts on instances launched from a template.
pub const TEMPLATE_ID_TAG: &str = "aws:ec2launchtemplate:id";
/// See [`TEMPLATE_ID_TAG`].
pub const TEMPLATE_VERSION_TAG: &str = "aws:ec2launchtemplate:version";

impl Service {
    /// The launch-template step of RunInstances: a request (botocore's
    /// member names) with `LaunchTemplate` (`spec`) becomes the template
    /// version's data with the request's own members on top, its instances
    /// tagged with the template's id and version.
    pub fn apply_launch_template(
        &mut self,
        caller: &Caller,
        spec: &LaunchTemplateSpecification,
        request: &Value,
    ) -> Result<Value> {
        let t = self.find_template(
            caller,
            spec.launch_template_id.as_deref(),
            spec.launch_template_name.as_deref(),
        )?;
        let v = self.find_version(&t, spec.version.as_deref().unwrap_or("$Default"))?;
        let mut merged = v.data.as_object().cloned().unwrap_or_default();
        for (k, val) in request.as_object().into_iter().flatten() {
            if k != "LaunchTemplate" {
                merged.insert(k.clone(), val.clone());
            }
        }
        // The instances say which template and version made them.
        let mut specs: Vec<Value> = merged
            .get("TagSpecifications")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let marks = [
            json!({"Key": TEMPLATE_ID_TAG, "Value": t.launch_template_id}),
            json!({"Key": TEMPLATE_VERSION_TAG, "Value": v.version.to_string()}),
        ];
        match specs
            .iter_mut()
            .find(|s| s.get("ResourceType").and_then(Value::as_str) == Some("instance"))
        {
            Some(s) => {
                let tags = s.as_object_mut().expect("a tag specification is an object");
                let list = tags.entry("Tags").or_insert_with(|| json!([]));
                if let Some(a) = list.as_array_mut() {
                    a.extend(marks);
                }
            }
            None => specs.push(json!({"ResourceType": "instance", "Tags": marks})),
        }
        merged.insert("TagSpecifications".into(), Value::Array(specs));
        Ok(Value::Object(merged))
    }
}
