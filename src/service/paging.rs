//! EC2's paging (`MaxResults`, `NextToken`) for every describe action that
//! pages: one page of a listing in a stable order, and an opaque token for
//! the next.

use super::{Error, ErrorCode, Result};

/// The paging members of a describe request.
#[derive(Debug, Clone, Default)]
pub struct Paging {
    /// `MaxResults`: the page size (each action has its own range).
    pub max_results: Option<i64>,
    /// `NextToken` from the previous page.
    pub next_token: Option<String>,
}

impl Paging {
    /// A request's paging members.
    pub fn of(max_results: Option<i64>, next_token: &Option<String>) -> Paging {
        Paging {
            max_results,
            next_token: next_token.clone(),
        }
    }
}

/// One page of `items` and the token for the next, EC2-style: the token is
/// opaque to clients (here the offset, checked on the way back).
pub fn page<T>(
    items: Vec<T>,
    paging: &Paging,
    min: i64,
    max: i64,
) -> Result<(Vec<T>, Option<String>)> {
    let size = match paging.max_results {
        None => items.len().max(1),
        Some(n) if (min..=max).contains(&n) => n as usize,
        Some(n) => {
            return Err(Error::invalid_value(format!(
                "Value ( {n} ) for parameter maxResults is invalid. Parameter must be between {min} and {max}."
            )))
        }
    };
    let start = match &paging.next_token {
        None => 0,
        Some(t) => t
            .strip_prefix("amirun-")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n <= items.len())
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidNextToken,
                    format!("The token '{t}' is invalid; pass the NextToken of the previous page"),
                )
            })?,
    };
    let end = (start + size).min(items.len());
    let next = (end < items.len()).then(|| format!("amirun-{end}"));
    Ok((
        items.into_iter().skip(start).take(end - start).collect(),
        next,
    ))
}
