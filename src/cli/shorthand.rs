//! Structured option values as the aws CLI takes them: its shorthand syntax
//! (`Name=x,Values=a,b`, `DeviceName=/dev/sda1,Ebs={SnapshotId=snap-1}`,
//! `Add=[{UserId=123456789012}]`), JSON, or `file://PATH` holding JSON.
//!
//! Shorthand scalars are strings. The model-driven verbs type them by
//! botocore's model ([`super::params`]); for amirun's own verbs [`coerce`]
//! turns the few numeric and boolean members EC2 has into JSON numbers and
//! booleans, so the result deserializes into the service's input types.

use serde_json::{Map, Value};

/// A parse error with the offending input.
#[derive(Debug, thiserror::Error)]
#[error("{message} in '{input}'")]
pub struct ShorthandError {
    message: String,
    input: String,
}

/// Members that are numbers in EC2's model.
const NUMERIC: &[&str] = &["VolumeSize", "Iops", "Throughput", "MinCount", "MaxCount"];
/// Members that are booleans in EC2's model.
const BOOLEAN: &[&str] = &["DeleteOnTermination", "Encrypted", "NoReboot"];

/// Parse one option value: JSON (`[`/`{`), `file://PATH` (JSON), or shorthand.
pub fn parse(text: &str) -> Result<Value, ShorthandError> {
    let err = |m: String| ShorthandError {
        message: m,
        input: text.to_string(),
    };
    if let Some(path) = text.strip_prefix("file://") {
        let body =
            std::fs::read_to_string(path).map_err(|e| err(format!("cannot read {path}: {e}")))?;
        return serde_json::from_str(&body)
            .map_err(|e| err(format!("invalid JSON in {path}: {e}")));
    }
    let t = text.trim_start();
    if t.starts_with('[') || t.starts_with('{') {
        if let Ok(v) = serde_json::from_str::<Value>(t) {
            return Ok(v);
        }
    }
    parse_shorthand(text).map(coerce)
}

/// Parse the shorthand syntax alone: every scalar a string, no JSON, no
/// files (the model-driven verbs type the result by botocore's model).
pub fn parse_shorthand(text: &str) -> Result<Value, ShorthandError> {
    let err = |m: String| ShorthandError {
        message: m,
        input: text.to_string(),
    };
    let mut p = Parser {
        s: text.chars().collect(),
        i: 0,
    };
    let v = p.structure(None).map_err(err)?;
    if p.i != p.s.len() {
        return Err(err(format!(
            "unexpected '{}' at position {}",
            p.s[p.i], p.i
        )));
    }
    Ok(v)
}

/// Parse a list option given as several arguments (or one JSON list).
pub fn parse_list(items: &[String]) -> Result<Vec<Value>, ShorthandError> {
    let mut out = Vec::new();
    for item in items {
        match parse(item)? {
            Value::Array(a) => out.extend(a.into_iter().map(coerce)),
            v => out.push(v),
        }
    }
    Ok(out)
}

/// Turn string members known to be numbers or booleans into JSON ones.
pub fn coerce(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let v = match (
                        &v,
                        NUMERIC.contains(&k.as_str()),
                        BOOLEAN.contains(&k.as_str()),
                    ) {
                        (Value::String(s), true, _) => {
                            s.parse::<u64>().map(Value::from).unwrap_or(v)
                        }
                        (Value::String(s), _, true) => match s.to_ascii_lowercase().as_str() {
                            "true" => Value::Bool(true),
                            "false" => Value::Bool(false),
                            _ => v,
                        },
                        _ => coerce(v),
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(coerce).collect()),
        v => v,
    }
}

struct Parser {
    s: Vec<char>,
    i: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    /// Whether a `key=` starts at the current position.
    fn key_ahead(&self) -> bool {
        let mut j = self.i;
        while let Some(&c) = self.s.get(j) {
            if c == '=' {
                return j > self.i;
            }
            if !(c.is_alphanumeric() || "-_.:".contains(c)) {
                return false;
            }
            j += 1;
        }
        false
    }

    /// `key=value,key=value…` up to `close` (or the end).
    fn structure(&mut self, close: Option<char>) -> Result<Value, String> {
        let mut map = Map::new();
        loop {
            let start = self.i;
            while let Some(c) = self.peek() {
                if c == '=' {
                    break;
                }
                self.i += 1;
            }
            if self.peek() != Some('=') {
                return Err(format!(
                    "expected 'Key=Value' but found '{}'",
                    self.s[start..self.i].iter().collect::<String>()
                ));
            }
            let key: String = self.s[start..self.i]
                .iter()
                .collect::<String>()
                .trim()
                .to_string();
            self.i += 1;
            let mut value = self.value(close)?;
            // `Values=a,b,c`: bare items after a comma continue the list.
            while self.peek() == Some(',') {
                self.i += 1;
                if self.key_ahead() {
                    self.i -= 1;
                    break;
                }
                let more = self.value(close)?;
                value = match value {
                    Value::Array(mut a) => {
                        a.push(more);
                        Value::Array(a)
                    }
                    v => Value::Array(vec![v, more]),
                };
            }
            map.insert(key, value);
            match self.peek() {
                Some(',') => self.i += 1,
                Some(c) if Some(c) == close => return Ok(Value::Object(map)),
                None if close.is_none() => return Ok(Value::Object(map)),
                None => return Err(format!("missing '{}'", close.unwrap_or(' '))),
                Some(c) => return Err(format!("unexpected '{c}'")),
            }
        }
    }

    fn value(&mut self, close: Option<char>) -> Result<Value, String> {
        match self.peek() {
            Some('[') => {
                self.i += 1;
                let mut items = Vec::new();
                if self.peek() == Some(']') {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                loop {
                    items.push(self.value(Some(']'))?);
                    match self.peek() {
                        Some(',') => self.i += 1,
                        Some(']') => {
                            self.i += 1;
                            return Ok(Value::Array(items));
                        }
                        _ => return Err("missing ']'".into()),
                    }
                }
            }
            Some('{') => {
                self.i += 1;
                let v = self.structure(Some('}'))?;
                self.i += 1;
                Ok(v)
            }
            Some(q @ ('"' | '\'')) => {
                self.i += 1;
                let start = self.i;
                while self.peek().is_some_and(|c| c != q) {
                    self.i += 1;
                }
                if self.peek() != Some(q) {
                    return Err(format!("missing closing {q}"));
                }
                let s: String = self.s[start..self.i].iter().collect();
                self.i += 1;
                Ok(Value::String(s))
            }
            _ => {
                let start = self.i;
                while let Some(c) = self.peek() {
                    if c == ',' || c == ']' || c == '}' || Some(c) == close {
                        break;
                    }
                    self.i += 1;
                }
                Ok(Value::String(self.s[start..self.i].iter().collect()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters() {
        assert_eq!(
            parse("Name=name,Values=debian-*,ubuntu*").unwrap(),
            json!({"Name":"name","Values":["debian-*","ubuntu*"]})
        );
        assert_eq!(
            parse("Name=tag:Role,Values=web").unwrap(),
            json!({"Name":"tag:Role","Values":"web"})
        );
    }

    #[test]
    fn nested_structures_and_lists() {
        assert_eq!(
            parse("DeviceName=/dev/sda1,Ebs={SnapshotId=snap-1,VolumeSize=20,DeleteOnTermination=false}").unwrap(),
            json!({"DeviceName":"/dev/sda1","Ebs":{"SnapshotId":"snap-1","VolumeSize":20,"DeleteOnTermination":false}})
        );
        assert_eq!(
            parse("Add=[{UserId=123456789012},{Group=all}]").unwrap(),
            json!({"Add":[{"UserId":"123456789012"},{"Group":"all"}]})
        );
        assert_eq!(
            parse("ResourceType=image,Tags=[{Key=a,Value=b},{Key=c,Value='x,y'}]").unwrap(),
            json!({"ResourceType":"image","Tags":[{"Key":"a","Value":"b"},{"Key":"c","Value":"x,y"}]})
        );
    }

    #[test]
    fn json_and_errors() {
        assert_eq!(
            parse(r#"[{"Name":"a","Values":["b"]}]"#).unwrap(),
            json!([{"Name":"a","Values":["b"]}])
        );
        let e = parse("Name").unwrap_err();
        assert!(e.to_string().contains("Key=Value"), "{e}");
        assert!(parse("Ebs={SnapshotId=x").is_err());
    }
}
