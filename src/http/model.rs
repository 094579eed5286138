//! EC2's Query protocol, read and written by botocore's model ([`crate::api::model`]).
//!
//! The model is the single source of truth for names on the wire:
//!
//! - requests: EC2's Query protocol flattens every list (`ImageId.1`,
//!   `Filter.1.Value.2`) and names a member by its `queryName`, else its
//!   `locationName` with a capital first letter, else the member name.
//!   [`parse_input`] turns the parameters into the JSON the CLI builds
//!   (botocore member names, PascalCase), refusing parameters the model
//!   does not know;
//! - responses: [`render_output`] walks the output shape alongside the
//!   service's JSON and writes each member under its `locationName`, lists
//!   as `<name><item>…</item></name>`. JSON keys the model lacks (amirun's
//!   own extensions) are left out, since no EC2 client could read them.

use crate::api::model::{model, Model, ShapeRef};
use crate::service::{Error, ErrorCode};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Query parameters as a tree: `Filter.1.Value.2=x` becomes
/// `Filter -> 1 -> Value -> 2 -> "x"`.
#[derive(Debug)]
enum Node {
    Leaf(String),
    Branch(BTreeMap<String, Node>),
}

fn unknown(path: &str) -> Error {
    Error::new(
        ErrorCode::UnknownParameter,
        format!("The parameter {path} is not recognized"),
    )
}

fn tree(params: &[(String, String)]) -> Result<BTreeMap<String, Node>, Error> {
    let mut root = BTreeMap::new();
    for (key, value) in params {
        let parts: Vec<&str> = key.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(unknown(key));
        }
        let mut map = &mut root;
        for (n, part) in parts.iter().enumerate() {
            let last = n + 1 == parts.len();
            if last {
                if map
                    .insert(part.to_string(), Node::Leaf(value.clone()))
                    .is_some()
                {
                    return Err(Error::new(
                        ErrorCode::InvalidParameter,
                        format!(
                            "The parameter {key} is given more than once or conflicts with another"
                        ),
                    ));
                }
            } else {
                let entry = map
                    .entry(part.to_string())
                    .or_insert_with(|| Node::Branch(BTreeMap::new()));
                match entry {
                    Node::Branch(m) => map = m,
                    Node::Leaf(_) => {
                        return Err(Error::new(
                            ErrorCode::InvalidParameter,
                            format!("The parameter {key} conflicts with another"),
                        ))
                    }
                }
            }
        }
    }
    Ok(root)
}

/// The wire name of a request member (EC2 protocol rules).
fn query_name(member: &str, r: &ShapeRef) -> String {
    if let Some(q) = &r.query_name {
        return q.clone();
    }
    if let Some(l) = &r.location_name {
        let mut c = l.chars();
        return match c.next() {
            Some(f) => f.to_uppercase().chain(c).collect(),
            None => member.to_string(),
        };
    }
    member.to_string()
}

/// Turn an operation's Query parameters (without `Action` and `Version`)
/// into the JSON the CLI builds: botocore member names, typed scalars.
pub fn parse_input(operation: &str, params: &[(String, String)]) -> Result<Value, Error> {
    let m = model();
    let op = m.operations.get(operation).ok_or_else(|| {
        Error::new(
            ErrorCode::InvalidAction,
            format!("The action {operation} is not valid for this web service."),
        )
    })?;
    let root = tree(params)?;
    match &op.input {
        Some(shape) => read(m, shape, Node::Branch(root), ""),
        None => match root.keys().next() {
            Some(k) => Err(unknown(k)),
            None => Ok(Value::Object(Map::new())),
        },
    }
}

fn read(m: &Model, shape_name: &str, node: Node, path: &str) -> Result<Value, Error> {
    let shape = m.shape(shape_name);
    let shown = if path.is_empty() { "(root)" } else { path };
    let bad = |what: &str| {
        Error::invalid_value(format!("Value for parameter {shown} is invalid: {what}"))
    };
    match shape.kind.as_str() {
        "structure" => {
            let Node::Branch(mut children) = node else {
                return Err(bad("expected a structure with sub-parameters"));
            };
            let mut out = Map::new();
            for (member, r) in &shape.members {
                let name = query_name(member, r);
                if let Some(child) = children.remove(&name) {
                    let p = if path.is_empty() {
                        name
                    } else {
                        format!("{path}.{name}")
                    };
                    out.insert(member.clone(), read(m, &r.shape, child, &p)?);
                }
            }
            if let Some(k) = children.keys().next() {
                return Err(unknown(&if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                }));
            }
            Ok(Value::Object(out))
        }
        "list" => {
            let Node::Branch(children) = node else {
                return Err(bad("expected a list (Name.1, Name.2, …)"));
            };
            let member = shape.member.as_ref().expect("lists have a member");
            let mut items: Vec<(u32, Node)> = Vec::new();
            for (k, v) in children {
                match k.parse::<u32>() {
                    Ok(n) if n >= 1 => items.push((n, v)),
                    _ => return Err(unknown(&format!("{path}.{k}"))),
                }
            }
            items.sort_by_key(|(n, _)| *n);
            items
                .into_iter()
                .map(|(n, v)| read(m, &member.shape, v, &format!("{path}.{n}")))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        kind => {
            let Node::Leaf(s) = node else {
                return Err(unknown(&format!("{path}.*")));
            };
            match kind {
                "boolean" => match s.to_ascii_lowercase().as_str() {
                    "true" => Ok(Value::Bool(true)),
                    "false" => Ok(Value::Bool(false)),
                    _ => Err(bad(&format!("'{s}' is not a boolean"))),
                },
                "integer" | "long" => s
                    .parse::<i64>()
                    .map(Value::from)
                    .map_err(|_| bad(&format!("'{s}' is not an integer"))),
                "double" | "float" => s
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .ok_or_else(|| bad(&format!("'{s}' is not a number"))),
                // Strings, timestamps, and blobs (base64, decoded by the action).
                _ => Ok(Value::String(s)),
            }
        }
    }
}

/// Escape text for XML content.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The XML body of an operation's response (inside `<XResponse>`), from the
/// service's JSON output.
pub fn render_output(operation: &str, value: &Value) -> String {
    let m = model();
    let mut out = String::new();
    match m
        .operations
        .get(operation)
        .and_then(|o| o.output.as_deref())
    {
        Some(shape) => write_members(m, shape, value, &mut out),
        None => out.push_str("<return>true</return>"),
    }
    out
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// A structure's members, each as an element.
fn write_members(m: &Model, shape_name: &str, value: &Value, out: &mut String) {
    let shape = m.shape(shape_name);
    let Some(obj) = value.as_object() else { return };
    for (key, v) in obj {
        if v.is_null() {
            continue;
        }
        let Some(r) = shape.members.get(key) else {
            tracing::debug!("{shape_name}.{key} is not in the EC2 model; left out of the XML");
            continue;
        };
        let name = r.location_name.clone().unwrap_or_else(|| lower_first(key));
        let member_shape = m.shape(&r.shape);
        if member_shape.kind == "list" && member_shape.flattened {
            for item in v.as_array().into_iter().flatten() {
                write_element(m, &r.shape, &name, item, out, true);
            }
        } else {
            write_element(m, &r.shape, &name, v, out, false);
        }
    }
}

fn write_element(
    m: &Model,
    shape_name: &str,
    name: &str,
    v: &Value,
    out: &mut String,
    item_of_flat: bool,
) {
    let shape = m.shape(shape_name);
    let kind = if item_of_flat {
        // A flattened list's items are written under the member's own name.
        let member = shape.member.as_ref().expect("lists have a member");
        return write_element(m, &member.shape, name, v, out, false);
    } else {
        shape.kind.as_str()
    };
    match kind {
        "structure" => {
            out.push_str(&format!("<{name}>"));
            write_members(m, shape_name, v, out);
            out.push_str(&format!("</{name}>"));
        }
        "list" => {
            let member = shape.member.as_ref().expect("lists have a member");
            let item = member.location_name.as_deref().unwrap_or("item");
            let items = v.as_array().map(Vec::as_slice).unwrap_or_default();
            if items.is_empty() {
                out.push_str(&format!("<{name}/>"));
                return;
            }
            out.push_str(&format!("<{name}>"));
            for i in items {
                write_element(m, &member.shape, item, i, out, false);
            }
            out.push_str(&format!("</{name}>"));
        }
        _ => {
            let text = match v {
                Value::String(s) => escape(s),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                other => escape(&other.to_string()),
            };
            out.push_str(&format!("<{name}>{text}</{name}>"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn flattened_lists_and_filters_become_cli_json() {
        let v = parse_input(
            "DescribeImages",
            &p(&[
                ("ImageId.2", "ami-2"),
                ("ImageId.1", "ami-1"),
                ("Owner.1", "self"),
                ("Filter.1.Name", "name"),
                ("Filter.1.Value.1", "a*"),
                ("Filter.1.Value.2", "b"),
                ("DryRun", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({
                "DryRun": false,
                "Filters": [{"Name": "name", "Values": ["a*", "b"]}],
                "ImageIds": ["ami-1", "ami-2"],
                "Owners": ["self"],
            })
        );
    }

    #[test]
    fn nested_structures_and_typed_scalars() {
        let v = parse_input(
            "RunInstances",
            &p(&[
                ("ImageId", "ami-1"),
                ("MinCount", "1"),
                ("MaxCount", "2"),
                ("BlockDeviceMapping.1.DeviceName", "/dev/sdf"),
                ("BlockDeviceMapping.1.Ebs.VolumeSize", "3"),
                ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
                ("TagSpecification.1.ResourceType", "instance"),
                ("TagSpecification.1.Tag.1.Key", "Name"),
                ("TagSpecification.1.Tag.1.Value", "x"),
                ("MetadataOptions.HttpTokens", "required"),
                ("InstanceInitiatedShutdownBehavior", "terminate"),
            ]),
        )
        .unwrap();
        assert_eq!(v["MaxCount"], 2);
        assert_eq!(v["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"], 3);
        assert_eq!(
            v["BlockDeviceMappings"][0]["Ebs"]["DeleteOnTermination"],
            true
        );
        assert_eq!(v["TagSpecifications"][0]["Tags"][0]["Key"], "Name");
        assert_eq!(v["MetadataOptions"]["HttpTokens"], "required");
        assert_eq!(v["InstanceInitiatedShutdownBehavior"], "terminate");
    }

    #[test]
    fn garbage_is_refused_with_ec2_codes() {
        let e = parse_input("DescribeImages", &p(&[("Bogus", "1")])).unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnknownParameter);
        let e = parse_input("DescribeImages", &p(&[("ImageId.x", "1")])).unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnknownParameter);
        let e = parse_input("DescribeImages", &p(&[("ImageId", "1")])).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidParameterValue);
        let e = parse_input("RunInstances", &p(&[("MinCount", "one")])).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidParameterValue);
        let e = parse_input(
            "DescribeImages",
            &p(&[("Filter.1.Name", "a"), ("Filter.1.Name.2", "b")]),
        )
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidParameter);
        let e = parse_input("DescribeImages", &p(&[("a..b", "1")])).unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnknownParameter);
    }

    #[test]
    fn output_uses_location_names_and_item_lists() {
        let xml = render_output(
            "DescribeImages",
            &json!({"Images": [{
                "ImageId": "ami-1",
                "Public": true,
                "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}}],
                "Tags": [{"Key": "a<b", "Value": "c"}],
                "Amirun": {"x": 1},
            }]}),
        );
        assert_eq!(
            xml,
            "<imagesSet><item><imageId>ami-1</imageId><isPublic>true</isPublic>\
             <blockDeviceMapping><item><deviceName>/dev/xvda</deviceName><ebs><volumeSize>8</volumeSize></ebs></item></blockDeviceMapping>\
             <tagSet><item><key>a&lt;b</key><value>c</value></item></tagSet></item></imagesSet>"
        );
        let xml = render_output(
            "DescribeInstances",
            &json!({"Reservations": [{"Groups": [], "Instances": [{"State": {"Code": 16, "Name": "running"}}]}]}),
        );
        assert_eq!(
            xml,
            "<reservationSet><item><groupSet/><instancesSet><item><instanceState><code>16</code><name>running</name></instanceState></item></instancesSet></item></reservationSet>"
        );
        assert_eq!(
            render_output("CreateTags", &Value::Null),
            "<return>true</return>"
        );
    }
}
