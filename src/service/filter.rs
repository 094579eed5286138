//! EC2 describe filters: `Name=…,Values=…` with `*` and `?` wildcards.
//!
//! Each resource answers a filter name with the values it has for it (none,
//! one or several); a filter matches when any value matches any pattern, and
//! a resource passes when every filter matches.

use super::error::{Error, Result};
use super::shapes::Filter;

/// Whether `text` matches `pattern`, where `*` is any run and `?` any one character.
///
/// ```
/// use amirun::service::filter::wildcard_match;
/// assert!(wildcard_match("debian-*-amd64", "debian-12-amd64"));
/// assert!(wildcard_match("ami-?", "ami-1"));
/// assert!(!wildcard_match("ubuntu*", "debian"));
/// ```
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Check filter names against the ones a resource knows (`tag:KEY` always allowed).
pub fn check_names(filters: &[Filter], known: &[&str]) -> Result<()> {
    for f in filters {
        if f.name.starts_with("tag:") && f.name.len() > 4 {
            continue;
        }
        if !known.contains(&f.name.as_str()) {
            return Err(Error::invalid_value(format!(
                "The filter '{}' is invalid; valid filters are {}, tag:KEY",
                f.name,
                known.join(", ")
            )));
        }
        if f.values.is_empty() {
            return Err(Error::invalid_value(format!(
                "The filter '{}' has no values",
                f.name
            )));
        }
    }
    Ok(())
}

/// Whether a resource passes all filters; `values(name)` gives its values for a filter name.
pub fn matches(filters: &[Filter], values: impl Fn(&str) -> Vec<String>) -> bool {
    filters.iter().all(|f| {
        let have = values(&f.name);
        have.iter()
            .any(|v| f.values.iter().any(|p| wildcard_match(p, v)))
    })
}

/// Whether a resource owned by `owner_id` (alias `owner_alias`) is selected
/// by an `--owners` / `--owner-ids` list: `self`, account ids or aliases.
/// An empty list selects everything.
pub fn owner_selected(
    owners: &[String],
    caller_account: &str,
    owner_id: &str,
    owner_alias: Option<&str>,
) -> bool {
    owners.is_empty()
        || owners.iter().any(|o| match o.as_str() {
            "self" => owner_id == caller_account,
            o if o.bytes().all(|b| b.is_ascii_digit()) => owner_id == o,
            alias => owner_alias == Some(alias),
        })
}

/// Values of the tag filters (`tag-key`, `tag:KEY`) for a resource's tags;
/// `None` when `name` is not a tag filter.
pub fn tag_values(tags: &[crate::store::TagState], name: &str) -> Option<Vec<String>> {
    if name == "tag-key" {
        return Some(tags.iter().map(|t| t.key.clone()).collect());
    }
    name.strip_prefix("tag:").map(|k| {
        tags.iter()
            .filter(|t| t.key == k)
            .map(|t| t.value.clone())
            .collect()
    })
}

/// The values a shown object (its serialized shape, botocore's member
/// names) has for filter `name`: the name's path in kebab case is the
/// shape's path in PascalCase (`attachment.vpc-id` is `Attachment.VpcId`),
/// a list member also found under EC2's `…Set` or plural spelling
/// (`cidr-block-association.state` is `CidrBlockAssociationSet.State`).
/// A name with no such path (a feature amirun never gives the object:
/// IPv6, outposts, …) has no values, so it matches nothing, as on EC2 for
/// an object without the feature.
pub fn shown_values<T: serde::Serialize>(shown: &T, name: &str) -> Vec<String> {
    let v = serde_json::to_value(shown).unwrap_or_default();
    path_values(&v, &pascal_path(name))
}

/// The scalars at a dotted PascalCase `path` under `v`, through lists
/// (`Set`-suffixed members too); empty strings are no value.
pub fn path_values(v: &serde_json::Value, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    collect(v, &path.split('.').collect::<Vec<_>>(), &mut out);
    out
}

/// `http-put-response-hop-limit` as `HttpPutResponseHopLimit`.
pub fn pascal(kebab: &str) -> String {
    kebab
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// `metadata-options.http-tokens` as `MetadataOptions.HttpTokens`.
pub fn pascal_path(kebab: &str) -> String {
    kebab.split('.').map(pascal).collect::<Vec<_>>().join(".")
}

/// The scalars at `path` under `v`, through lists.
fn collect(v: &serde_json::Value, path: &[&str], out: &mut Vec<String>) {
    use serde_json::Value;
    match (v, path.split_first()) {
        (Value::Array(items), _) => items.iter().for_each(|i| collect(i, path, out)),
        (Value::Object(o), Some((first, rest))) => {
            if let Some(next) = o
                .get(*first)
                .or_else(|| o.get(&format!("{first}Set")))
                .or_else(|| o.get(&format!("{first}s")))
            {
                collect(next, rest, out);
            }
        }
        (Value::String(s), None) if !s.is_empty() => out.push(s.clone()),
        (Value::Bool(b), None) => out.push(b.to_string()),
        (Value::Number(n), None) => out.push(n.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ErrorCode;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a*b*c", "aXXbYc"));
        assert!(!wildcard_match("a*b*c", "aXXbY"));
        assert!(wildcard_match("??", "ab"));
        assert!(!wildcard_match("??", "abc"));
        assert!(wildcard_match("x86_64", "x86_64"));
    }

    #[test]
    fn shown_values_follow_the_shape() {
        let v = serde_json::json!({
            "CidrBlockAssociationSet": [{"State": "associated"}],
            "Routes": [{"GatewayId": "igw-1"}, {"GatewayId": ""}],
            "IsDefault": true,
            "Attachment": {"DeviceIndex": 0},
        });
        assert_eq!(
            shown_values(&v, "cidr-block-association.state"),
            ["associated"]
        );
        assert_eq!(shown_values(&v, "route.gateway-id"), ["igw-1"]);
        assert_eq!(shown_values(&v, "is-default"), ["true"]);
        assert_eq!(shown_values(&v, "attachment.device-index"), ["0"]);
        assert!(shown_values(&v, "ipv6-cidr-block-association.state").is_empty());
    }

    #[test]
    fn unknown_filter_is_an_error() {
        let f = vec![Filter {
            name: "colour".into(),
            values: vec!["red".into()],
        }];
        let e = check_names(&f, &["name"]).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidParameterValue);
        assert!(e.message().contains("colour"));
    }

    #[test]
    fn all_filters_must_match() {
        let f = vec![
            Filter {
                name: "name".into(),
                values: vec!["deb*".into()],
            },
            Filter {
                name: "architecture".into(),
                values: vec!["arm64".into(), "x86_64".into()],
            },
        ];
        assert!(matches(&f, |n| match n {
            "name" => vec!["debian".into()],
            _ => vec!["x86_64".into()],
        }));
        assert!(!matches(&f, |n| match n {
            "name" => vec!["ubuntu".into()],
            _ => vec!["x86_64".into()],
        }));
    }
}
