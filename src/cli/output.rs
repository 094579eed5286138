//! Rendering results as the aws CLI does: `--output json|table|text`, after
//! an optional JMESPath `--query`.

use serde::Serialize;
use serde_json::Value;
use std::io::Write;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Table,
    Text,
}

/// Apply `query` (JMESPath) to `value`.
pub fn apply_query(value: Value, query: Option<&str>) -> Result<Value, String> {
    let Some(q) = query else { return Ok(value) };
    let expr = jmespath::compile(&legacy_literals(q))
        .map_err(|e| format!("Bad value for --query {q}: {e}"))?;
    let data = jmespath::Variable::from_serializable(&value).map_err(|e| e.to_string())?;
    let result = expr
        .search(data)
        .map_err(|e| format!("Bad value for --query {q}: {e}"))?;
    serde_json::to_value(&*result).map_err(|e| e.to_string())
}

/// The aws CLI's JMESPath (jmespath.py) still takes a backtick literal that
/// is not JSON as a string (`` `arm64` `` for `` `"arm64"` ``), and scripts
/// rely on it: rewrite such literals into JSON strings. Raw strings
/// (`'…'`) and quoted identifiers (`"…"`) are copied as they are.
fn legacy_literals(q: &str) -> String {
    let mut out = String::with_capacity(q.len());
    let mut chars = q.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                while let Some(d) = chars.next() {
                    out.push(d);
                    if d == '\\' {
                        if let Some(e) = chars.next() {
                            out.push(e);
                        }
                    } else if d == c {
                        break;
                    }
                }
            }
            '`' => {
                let mut lexeme = String::new();
                while let Some(d) = chars.next() {
                    match d {
                        '\\' if chars.peek() == Some(&'`') => {
                            lexeme.push(chars.next().unwrap_or('`'))
                        }
                        '`' => break,
                        _ => lexeme.push(d),
                    }
                }
                let body = if serde_json::from_str::<Value>(&lexeme).is_ok() {
                    lexeme
                } else {
                    Value::String(lexeme.trim_start().to_string()).to_string()
                };
                out.push('`');
                out.push_str(&body.replace('`', "\\`"));
                out.push('`');
            }
            _ => out.push(c),
        }
    }
    out
}

/// Render `value` to `out`; `title` is the operation name (table header).
pub fn render(
    out: &mut dyn Write,
    value: &Value,
    format: Format,
    title: &str,
) -> std::io::Result<()> {
    match format {
        Format::Json => {
            let mut buf = Vec::new();
            let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
            value.serialize(&mut ser).map_err(std::io::Error::other)?;
            out.write_all(&buf)?;
            writeln!(out)
        }
        Format::Text => {
            let mut lines = Vec::new();
            text_lines(value, None, &mut lines);
            for l in lines {
                writeln!(out, "{l}")?;
            }
            Ok(())
        }
        Format::Table => {
            let mut t = Vec::new();
            table(value, title, &mut t);
            for l in t {
                writeln!(out, "{l}")?;
            }
            Ok(())
        }
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "True".into() } else { "False".into() }),
        Value::Null => Some("None".into()),
        _ => None,
    }
}

/// aws-style text: one line per object, tab-separated scalar values sorted
/// by key, prefixed by the upper-cased name of the list it is in.
fn text_lines(v: &Value, name: Option<&str>, lines: &mut Vec<String>) {
    match v {
        Value::Array(items) => {
            if items.iter().all(|i| scalar(i).is_some()) {
                if !items.is_empty() {
                    let vals: Vec<String> = items.iter().filter_map(scalar).collect();
                    let mut line = vals.join("\t");
                    if let Some(n) = name {
                        line = format!("{}\t{line}", n.to_uppercase());
                    }
                    lines.push(line);
                }
            } else {
                for i in items {
                    text_lines(i, name, lines);
                }
            }
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let vals: Vec<String> = keys.iter().filter_map(|k| scalar(&map[*k])).collect();
            if !vals.is_empty() {
                let mut line = vals.join("\t");
                if let Some(n) = name {
                    line = format!("{}\t{line}", n.to_uppercase());
                }
                lines.push(line);
            }
            for k in keys {
                if matches!(map[k], Value::Array(_) | Value::Object(_)) {
                    text_lines(&map[k], Some(k), lines);
                }
            }
        }
        other => lines.push(scalar(other).unwrap_or_default()),
    }
}

/// A boxed table: objects' scalar members as columns; nested lists as sub-tables.
fn table(v: &Value, title: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            let scalars: Vec<(String, String)> = map
                .iter()
                .filter_map(|(k, v)| scalar(v).map(|s| (k.clone(), s)))
                .collect();
            if !scalars.is_empty() {
                grid(
                    title,
                    &["Key".into(), "Value".into()],
                    &scalars
                        .iter()
                        .map(|(k, v)| vec![k.clone(), v.clone()])
                        .collect::<Vec<_>>(),
                    out,
                );
            } else if !title.is_empty()
                && map
                    .values()
                    .all(|v| !matches!(v, Value::Array(a) if !a.is_empty()))
            {
                grid(title, &[], &[], out);
            }
            for (k, v) in map {
                if matches!(v, Value::Array(_) | Value::Object(_)) {
                    table(v, k, out);
                }
            }
        }
        Value::Array(items) => {
            if items.iter().all(|i| i.is_object()) {
                let mut columns: Vec<String> = Vec::new();
                for i in items {
                    for (k, v) in i.as_object().into_iter().flatten() {
                        if scalar(v).is_some() && !columns.contains(k) {
                            columns.push(k.clone());
                        }
                    }
                }
                let rows: Vec<Vec<String>> = items
                    .iter()
                    .map(|i| {
                        columns
                            .iter()
                            .map(|c| i.get(c).and_then(scalar).unwrap_or_default())
                            .collect()
                    })
                    .collect();
                grid(title, &columns, &rows, out);
            } else {
                let rows: Vec<Vec<String>> = items
                    .iter()
                    .map(|i| vec![scalar(i).unwrap_or_else(|| i.to_string())])
                    .collect();
                grid(title, &[], &rows, out);
            }
        }
        other => grid(title, &[], &[vec![scalar(other).unwrap_or_default()]], out),
    }
}

fn grid(title: &str, header: &[String], rows: &[Vec<String>], out: &mut Vec<String>) {
    let ncol = header
        .len()
        .max(rows.iter().map(|r| r.len()).max().unwrap_or(0))
        .max(1);
    let mut widths = vec![0usize; ncol];
    for (i, h) in header.iter().enumerate() {
        widths[i] = widths[i].max(h.chars().count());
    }
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let inner: usize = widths.iter().map(|w| w + 3).sum::<usize>() - 1;
    let inner = inner.max(title.chars().count() + 2);
    // Widen the last column when the title is wider than the columns.
    let used: usize = widths.iter().map(|w| w + 3).sum::<usize>() - 1;
    if inner > used {
        widths[ncol - 1] += inner - used;
    }
    let rule = format!(
        "+{}+",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    out.push(format!("+{}+", "-".repeat(inner)));
    out.push(format!("|{:^inner$}|", title));
    out.push(rule.clone());
    let line = |cells: &[String]| {
        let parts: Vec<String> = (0..ncol)
            .map(|i| {
                format!(
                    " {:<w$} ",
                    cells.get(i).map(String::as_str).unwrap_or(""),
                    w = widths[i]
                )
            })
            .collect();
        format!("|{}|", parts.join("|"))
    };
    if !header.is_empty() && !rows.is_empty() {
        out.push(line(header));
        out.push(rule.clone());
    }
    for r in rows {
        out.push(line(r));
    }
    if !rows.is_empty() {
        out.push(rule);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn backtick_literals_that_are_not_json_are_strings_as_in_the_aws_cli() {
        use super::{apply_query, legacy_literals};
        assert_eq!(
            legacy_literals("Images[?Architecture==`arm64`]"),
            "Images[?Architecture==`\"arm64\"`]"
        );
        assert_eq!(legacy_literals("a[?n==`3`]"), "a[?n==`3`]");
        assert_eq!(legacy_literals("a[?s=='`x`']"), "a[?s=='`x`']");
        let v = serde_json::json!({"I": [{"A": "x86_64", "N": 1}, {"A": "arm64", "N": 2}]});
        assert_eq!(
            apply_query(v.clone(), Some("I[?A==`arm64`].N")).unwrap(),
            serde_json::json!([2])
        );
        assert_eq!(
            apply_query(v, Some("I[?N==`1`].A")).unwrap(),
            serde_json::json!(["x86_64"])
        );
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn query_selects() {
        let v = json!({"Images":[{"ImageId":"ami-1","Name":"a"},{"ImageId":"ami-2","Name":"b"}]});
        assert_eq!(
            apply_query(v, Some("Images[].ImageId")).unwrap(),
            json!(["ami-1", "ami-2"])
        );
    }

    #[test]
    fn text_is_tab_separated() {
        let v = json!({"Images":[{"Name":"a","ImageId":"ami-1"}]});
        let mut out = Vec::new();
        render(&mut out, &v, Format::Text, "DescribeImages").unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "IMAGES\tami-1\ta\n");
    }

    #[test]
    fn table_has_columns() {
        let v = json!({"Images":[{"ImageId":"ami-1","Name":"a"}]});
        let mut out = Vec::new();
        render(&mut out, &v, Format::Table, "DescribeImages").unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("| ImageId | Name"), "{s}");
        assert!(s.contains("| ami-1   | a "), "{s}");
    }
}
