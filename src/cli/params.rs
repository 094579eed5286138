//! One option's text to the JSON value botocore's model asks for, as the aws
//! CLI unpacks it (awscli/argprocess.py, awscli/paramfile.py).
//!
//! A value may come from a file (`file://PATH` as text, `fileb://PATH` as
//! bytes). Scalars are parsed by their type (integer, double, boolean);
//! blobs are base64-encoded, as they travel in a request. Structures, maps
//! and lists of structures take JSON or the aws CLI's shorthand
//! ([`super::shorthand`]); the result is then walked against the model as
//! the aws CLI's BackCompatVisitor and botocore's validator do: shorthand
//! strings become the numbers, booleans and lists the model says, and a key
//! the shape does not have is refused, naming the valid ones.

use super::shorthand;
use crate::api::model::{model, Shape};
use base64::Engine;
use serde_json::{Map, Value};

/// Why a value was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ParamError {
    /// The text could not be read or parsed ("Error parsing parameter").
    Parse(String),
    /// It parsed but does not fit the model ("Parameter validation failed").
    Validation(String),
}

/// A value as given: text, or the bytes of a `fileb://` file.
enum Raw {
    Text(String),
    Bytes(Vec<u8>),
}

impl Raw {
    fn text(self) -> Result<String, ParamError> {
        match self {
            Raw::Text(s) => Ok(s),
            Raw::Bytes(b) => String::from_utf8(b).map_err(|_| {
                ParamError::Parse("the file's contents are not UTF-8 text".to_string())
            }),
        }
    }
}

/// `file://PATH` and `fileb://PATH` (unless `paramfile` is off), else the text.
fn load(value: &str, paramfile: bool) -> Result<Raw, ParamError> {
    if !paramfile {
        return Ok(Raw::Text(value.to_string()));
    }
    let (path, binary) = match (
        value.strip_prefix("file://"),
        value.strip_prefix("fileb://"),
    ) {
        (Some(p), _) => (p, false),
        (_, Some(p)) => (p, true),
        _ => return Ok(Raw::Text(value.to_string())),
    };
    let bytes = std::fs::read(path)
        .map_err(|e| ParamError::Parse(format!("Unable to load paramfile {value}: {e}")))?;
    if binary {
        return Ok(Raw::Bytes(bytes));
    }
    String::from_utf8(bytes).map(Raw::Text).map_err(|_| {
        ParamError::Parse(format!(
            "Unable to load paramfile ({path}), text contents could not be decoded. \
             If this is a binary file, please use the fileb:// prefix instead of the file:// prefix."
        ))
    })
}

/// The value of one option for a member of shape `shape`: `values` are the
/// words given after the option (one, or several for a list). `blob` treats
/// the member as bytes to base64-encode whatever its model type;
/// `paramfile` off takes `file://…` literally (a URL member).
pub fn unpack(
    values: &[String],
    shape: &Shape,
    path: &str,
    blob: bool,
    paramfile: bool,
) -> Result<Value, ParamError> {
    let first = values.first().map(String::as_str).unwrap_or_default();
    if blob {
        let bytes = match load(first, paramfile)? {
            Raw::Text(s) => s.into_bytes(),
            Raw::Bytes(b) => b,
        };
        return Ok(Value::String(
            base64::engine::general_purpose::STANDARD.encode(bytes),
        ));
    }
    match shape.kind.as_str() {
        "structure" | "map" => {
            let text = load(first, paramfile)?.text()?;
            let v = complex(&text, shape)?;
            coerce(v, shape, path)
        }
        "list" => {
            let member = member_shape(shape);
            // One value that is (or whose file holds) a JSON list: the whole list.
            if values.len() == 1 {
                let text = load(first, paramfile)?.text()?;
                if text.trim_start().starts_with('[') {
                    return coerce(json(&text)?, shape, path);
                }
                if text != first {
                    return coerce(Value::Array(vec![item(&text, member)?]), shape, path);
                }
            }
            let mut items = Vec::new();
            for v in values {
                match item(v, member)? {
                    // A JSON list among several words: its items.
                    Value::Array(a) if is_complex(member) => items.extend(a),
                    x => items.push(x),
                }
            }
            coerce(Value::Array(items), shape, path)
        }
        _ => {
            let text = load(first, paramfile)?.text()?;
            scalar(&text, shape, path)
        }
    }
}

/// One word of a list: a scalar as text, a structure as JSON or shorthand.
fn item(text: &str, member: &Shape) -> Result<Value, ParamError> {
    if is_complex(member) {
        complex(text, member)
    } else {
        Ok(Value::String(text.to_string()))
    }
}

fn is_complex(shape: &Shape) -> bool {
    matches!(shape.kind.as_str(), "structure" | "map" | "list")
}

/// A structure, map or list as JSON (`{…}` / `[…]`) or shorthand.
fn complex(text: &str, shape: &Shape) -> Result<Value, ParamError> {
    let t = text.trim_start();
    if t.starts_with('{') || t.starts_with('[') {
        return json(t);
    }
    // A structure whose one member is a string `Value` takes the plain text
    // (`--description "My AMI"` for `{"Value": "My AMI"}`), as the aws CLI does.
    if shape.kind == "structure"
        && shape.members.len() == 1
        && shape
            .members
            .get("Value")
            .is_some_and(|r| model().shape(&r.shape).kind == "string")
    {
        let value = shorthand::parse_shorthand(text)
            .ok()
            .and_then(|v| v.get("Value").cloned())
            .unwrap_or_else(|| Value::String(text.to_string()));
        return Ok(serde_json::json!({ "Value": value }));
    }
    shorthand::parse_shorthand(text).map_err(|e| ParamError::Parse(e.to_string()))
}

fn json(text: &str) -> Result<Value, ParamError> {
    serde_json::from_str(text)
        .map_err(|e| ParamError::Parse(format!("Invalid JSON: {e}\nJSON received: {text}")))
}

fn member_shape(list: &Shape) -> &'static Shape {
    let r = list.member.as_ref().expect("a list shape has a member");
    model().shape(&r.shape)
}

/// A scalar given as text, parsed by its model type.
fn scalar(text: &str, shape: &Shape, path: &str) -> Result<Value, ParamError> {
    let bad = |what: &str| ParamError::Parse(format!("invalid {what} for {path}: '{text}'"));
    Ok(match shape.kind.as_str() {
        "integer" | "long" => Value::from(text.trim().parse::<i64>().map_err(|_| bad("integer"))?),
        "double" | "float" => {
            let f: f64 = text.trim().parse().map_err(|_| bad("number"))?;
            serde_json::Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(|| bad("number"))?
        }
        "boolean" => match text.trim().to_ascii_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(bad("boolean")),
        },
        "blob" => Value::String(base64::engine::general_purpose::STANDARD.encode(text.as_bytes())),
        _ => Value::String(text.to_string()),
    })
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "structure",
    }
}

/// Walk `v` against `shape`: shorthand strings become the model's numbers,
/// booleans and one-item lists; unknown keys and wrong types are refused.
pub fn coerce(v: Value, shape: &Shape, path: &str) -> Result<Value, ParamError> {
    let wrong = |v: &Value, valid: &str| {
        ParamError::Validation(format!(
            "Invalid type for parameter {path}, value: {v}, type: {}, valid types: {valid}",
            type_of(v)
        ))
    };
    match shape.kind.as_str() {
        "structure" => {
            let Value::Object(map) = v else {
                return Err(wrong(&v, "structure"));
            };
            let mut out = Map::new();
            for (key, value) in map {
                let Some(r) = shape.members.get(&key) else {
                    let valid: Vec<&str> = shape.members.keys().map(String::as_str).collect();
                    return Err(ParamError::Validation(format!(
                        "Unknown parameter in {path}: \"{key}\", must be one of: {}",
                        valid.join(", ")
                    )));
                };
                let inner = coerce(value, model().shape(&r.shape), &format!("{path}.{key}"))?;
                out.insert(key, inner);
            }
            Ok(Value::Object(out))
        }
        "list" => {
            let member = member_shape(shape);
            let items = match v {
                Value::Array(a) => a,
                // `Values=web` means `["web"]`.
                other => vec![other],
            };
            items
                .into_iter()
                .enumerate()
                .map(|(i, x)| coerce(x, member, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()
                .map(Value::Array)
        }
        // The model slice keeps no key/value shapes for maps.
        "map" => match v {
            Value::Object(_) => Ok(v),
            other => Err(wrong(&other, "map")),
        },
        "integer" | "long" => match &v {
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(v),
            Value::String(s) => scalar(s, shape, path),
            _ => Err(wrong(&v, "integer")),
        },
        "double" | "float" => match &v {
            Value::Number(_) => Ok(v),
            Value::String(s) => scalar(s, shape, path),
            _ => Err(wrong(&v, "number")),
        },
        "boolean" => match &v {
            Value::Bool(_) => Ok(v),
            Value::String(s) => scalar(s, shape, path),
            _ => Err(wrong(&v, "boolean")),
        },
        // Strings, timestamps and nested blobs travel as text.
        _ => match &v {
            Value::String(_) => Ok(v),
            _ => Err(wrong(&v, "string")),
        },
    }
}

/// How to write a value of `shape` on the command line, as the aws CLI's
/// help shows it: `Name=string,Values=string,string` for a structure (a
/// list of them repeats it), `string` for a scalar.
pub fn syntax(shape: &Shape) -> String {
    fn inner(shape: &Shape, depth: usize) -> String {
        match shape.kind.as_str() {
            "structure" if depth >= 3 => "{...}".to_string(),
            "structure" => shape
                .members
                .iter()
                .map(|(name, r)| {
                    let s = model().shape(&r.shape);
                    let v = match s.kind.as_str() {
                        "structure" => format!("{{{}}}", inner(s, depth + 1)),
                        "list" => {
                            let m = member_shape(s);
                            if is_complex(m) {
                                let one = format!("{{{}}}", inner(m, depth + 1));
                                format!("[{one},{one}]")
                            } else {
                                format!("{},{}", m.kind, m.kind)
                            }
                        }
                        "map" => "{KeyName1=string,KeyName2=string}".to_string(),
                        k => k.to_string(),
                    };
                    format!("{name}={v}")
                })
                .collect::<Vec<_>>()
                .join(","),
            "list" => inner(member_shape(shape), depth),
            "map" => "KeyName1=string,KeyName2=string".to_string(),
            k => k.to_string(),
        }
    }
    inner(shape, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shape(name: &str) -> &'static Shape {
        model().shape(name)
    }

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shorthand_takes_the_model_types() {
        let v = unpack(
            &words(&["DeviceName=/dev/sdf,Ebs={VolumeSize=20,DeleteOnTermination=false}"]),
            shape("BlockDeviceMappingRequestList"),
            "BlockDeviceMappings",
            false,
            true,
        )
        .unwrap();
        assert_eq!(
            v,
            json!([{"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 20, "DeleteOnTermination": false}}])
        );
        // `Values=web` is a list of one.
        let v = unpack(
            &words(&["Name=tag:Role,Values=web", "Name=name,Values=a,b"]),
            shape("FilterList"),
            "Filters",
            false,
            true,
        )
        .unwrap();
        assert_eq!(
            v,
            json!([{"Name": "tag:Role", "Values": ["web"]}, {"Name": "name", "Values": ["a", "b"]}])
        );
    }

    #[test]
    fn unknown_keys_and_bad_numbers_are_refused() {
        let e = unpack(
            &words(&["Name=a,Valuez=b"]),
            shape("FilterList"),
            "Filters",
            false,
            true,
        )
        .unwrap_err();
        assert_eq!(
            e,
            ParamError::Validation(
                "Unknown parameter in Filters[0]: \"Valuez\", must be one of: Name, Values".into()
            )
        );
        let e = unpack(
            &words(&["DeviceName=/dev/sdf,Ebs={VolumeSize=big}"]),
            shape("BlockDeviceMappingRequestList"),
            "BlockDeviceMappings",
            false,
            true,
        )
        .unwrap_err();
        assert!(
            matches!(&e, ParamError::Parse(m) if m.contains("BlockDeviceMappings[0].Ebs.VolumeSize")),
            "{e:?}"
        );
        let e = unpack(
            &words(&[r#"[{"Name": 1}]"#]),
            shape("FilterList"),
            "Filters",
            false,
            true,
        )
        .unwrap_err();
        assert!(
            matches!(&e, ParamError::Validation(m) if m.contains("Filters[0].Name")),
            "{e:?}"
        );
    }

    #[test]
    fn json_files_and_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("filters.json");
        std::fs::write(&f, r#"[{"Name":"name","Values":["x"]}]"#).unwrap();
        let v = unpack(
            &[format!("file://{}", f.display())],
            shape("FilterList"),
            "Filters",
            false,
            true,
        )
        .unwrap();
        assert_eq!(v, json!([{"Name": "name", "Values": ["x"]}]));
        let b = dir.path().join("bytes");
        std::fs::write(&b, [0u8, 159, 146, 150]).unwrap();
        let blob = shape("Blob");
        let v = unpack(&[format!("fileb://{}", b.display())], blob, "B", true, true).unwrap();
        assert_eq!(v, json!("AJ+Slg=="));
        // file:// is text: these bytes are not.
        let e = unpack(
            &[format!("file://{}", b.display())],
            shape("String"),
            "S",
            false,
            true,
        )
        .unwrap_err();
        assert!(matches!(e, ParamError::Parse(m) if m.contains("fileb://")));
        // With the paramfile off (a URL member) the text is the value.
        let url = format!("file://{}", b.display());
        let v = unpack(
            std::slice::from_ref(&url),
            shape("String"),
            "S",
            false,
            false,
        )
        .unwrap();
        assert_eq!(v, Value::String(url));
    }

    #[test]
    fn syntax_is_the_shorthand_to_type() {
        assert_eq!(
            syntax(shape("FilterList")),
            "Name=string,Values=string,string"
        );
        assert_eq!(syntax(shape("String")), "string");
        assert!(syntax(shape("BlockDeviceMappingRequestList"))
            .contains(",Ebs={AvailabilityZone=string,"));
    }
}
