//! AWS Signature Version 4, as far as amirun needs it.
//!
//! Every request's `Authorization` header is parsed: its access key picks
//! the account (see [`super::Credentials`]) and its credential scope names
//! the region the client is talking to. In strict mode the signature is
//! checked too, as AWS checks it:
//!
//! - the canonical request is rebuilt from the client's own `SignedHeaders`
//!   list, so whatever headers the client chose to sign are the ones verified;
//! - its payload hash is the SHA-256 of the body actually received, never the
//!   client's `x-amz-content-sha256` header (which, when sent, must equal
//!   it): a captured request cannot be replayed with another body;
//! - `X-Amz-Date` must be within [`MAX_SKEW`] (15 minutes) of the server's
//!   clock, past or future, else `RequestExpired`; so a captured request
//!   cannot be replayed after that window.
//!
//! Error codes are EC2's own (other services differ): a wrong signature,
//! whether from a wrong secret or a changed body, is `AuthFailure` ("AWS was
//! not able to validate the provided access credentials", HTTP 401; EC2 does
//! not answer `SignatureDoesNotMatch` to SigV4 requests); a stale or future
//! date is `RequestExpired` (HTTP 400); a malformed date or a signed header
//! that is missing is `IncompleteSignature` (HTTP 400).

use crate::error_code::ErrorCode;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// A parsed `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key: String,
    /// `YYYYMMDD` of the credential scope.
    pub date: String,
    pub region: String,
    pub service: String,
    /// Lower-case header names, in the client's order.
    pub signed_headers: Vec<String>,
    /// Hex signature.
    pub signature: String,
}

/// How far `X-Amz-Date` may be from the server's clock, either way (AWS: 15 minutes).
pub const MAX_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

/// Why an `Authorization` header was refused (the message; its code is `AuthFailure`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// Why a request failed verification in strict mode, with EC2's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The request is malformed (no X-Amz-Date, a signed header missing, …).
    #[error("{0}")]
    Incomplete(String),
    /// `X-Amz-Date` is more than [`MAX_SKEW`] away from now.
    #[error("{0}")]
    Expired(String),
    /// The signature (or the payload hash) does not match: `AuthFailure`.
    #[error("{0}")]
    Mismatch(String),
}

impl VerifyError {
    /// EC2's error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            VerifyError::Incomplete(_) => ErrorCode::IncompleteSignature,
            VerifyError::Expired(_) => ErrorCode::RequestExpired,
            VerifyError::Mismatch(_) => ErrorCode::AuthFailure,
        }
    }
}

impl From<AuthError> for VerifyError {
    fn from(e: AuthError) -> Self {
        VerifyError::Incomplete(e.0)
    }
}

/// Parse an `Authorization` header value.
pub fn parse(header: &str) -> Result<Authorization, AuthError> {
    let rest = header
        .strip_prefix("AWS4-HMAC-SHA256")
        .ok_or_else(|| AuthError("Only AWS4-HMAC-SHA256 authorization is supported".into()))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let missing = |what: &str| AuthError(format!("Authorization header is missing {what}"));
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 || scope[4] != "aws4_request" || scope[0].is_empty() {
        return Err(AuthError(format!(
            "Credential '{credential}' is not KEY/DATE/REGION/SERVICE/aws4_request"
        )));
    }
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AuthError("Signature is not 64 hex digits".into()));
    }
    Ok(Authorization {
        access_key: scope[0].to_string(),
        date: scope[1].to_string(),
        region: scope[2].to_string(),
        service: scope[3].to_string(),
        signed_headers: signed
            .ok_or_else(|| missing("SignedHeaders"))?
            .split(';')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect(),
        signature: signature.to_ascii_lowercase(),
    })
}

/// What a request looked like on the wire, for rebuilding its canonical form.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    /// Header name and value pairs, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
}

fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k != "X-Amz-Signature")
        .map(|(k, v)| (uri_encode(&k, false), uri_encode(&v, false)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The canonical request (SigV4 step 1) from the client's signed headers.
pub fn canonical_request(auth: &Authorization, req: &Request) -> Result<String, AuthError> {
    let mut headers = String::new();
    for name in &auth.signed_headers {
        let values: Vec<String> = req
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return Err(AuthError(format!(
                "Signed header '{name}' is not in the request"
            )));
        }
        headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    // Always the hash of the body received: a client's x-amz-content-sha256
    // is checked against it in `verify`, never trusted in its place.
    let payload = hex::encode(Sha256::digest(req.body));
    let path = if req.path.is_empty() { "/" } else { req.path };
    Ok(format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        uri_encode(path, true),
        canonical_query(req.query),
        headers,
        auth.signed_headers.join(";"),
        payload
    ))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// The signature a client holding `secret` would have sent.
pub fn signature(auth: &Authorization, req: &Request, secret: &str) -> Result<String, AuthError> {
    let amz_date = req
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-amz-date"))
        .map(|(_, v)| v.trim().to_string())
        .ok_or_else(|| AuthError("The request has no X-Amz-Date header".into()))?;
    if !amz_date.starts_with(&auth.date) {
        return Err(AuthError(format!(
            "X-Amz-Date {amz_date} is not on the credential's date {}",
            auth.date
        )));
    }
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let canonical = canonical_request(auth, req)?;
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(format!("AWS4{secret}").as_bytes(), auth.date.as_bytes());
    let k = hmac(&k, auth.region.as_bytes());
    let k = hmac(&k, auth.service.as_bytes());
    let k = hmac(&k, b"aws4_request");
    Ok(hex::encode(hmac(&k, to_sign.as_bytes())))
}

/// Check the request as AWS does at time `now`: `X-Amz-Date` within
/// [`MAX_SKEW`], the body's hash equal to any `x-amz-content-sha256` sent,
/// and the signature equal (constant time) to the one `secret` gives.
pub fn verify(
    auth: &Authorization,
    req: &Request,
    secret: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), VerifyError> {
    let amz_date = header(req, "x-amz-date")
        .ok_or_else(|| VerifyError::Incomplete("The request has no X-Amz-Date header".into()))?;
    let signed_at = chrono::NaiveDateTime::parse_from_str(amz_date.trim(), "%Y%m%dT%H%M%SZ")
        .map_err(|_| {
            VerifyError::Incomplete(format!(
                "X-Amz-Date '{amz_date}' is not in the form YYYYMMDDTHHMMSSZ"
            ))
        })?
        .and_utc();
    if (now - signed_at).abs() > MAX_SKEW {
        return Err(VerifyError::Expired(format!(
            "Request has expired: it is signed at {} and the server's time is {}; a signature is valid for 15 minutes either way",
            signed_at.format("%Y-%m-%dT%H:%M:%SZ"),
            now.format("%Y-%m-%dT%H:%M:%SZ")
        )));
    }
    if let Some(claimed) = header(req, "x-amz-content-sha256") {
        let actual = hex::encode(Sha256::digest(req.body));
        if !claimed.trim().eq_ignore_ascii_case(&actual) {
            return Err(VerifyError::Mismatch(format!(
                "AWS was not able to validate the provided access credentials: the x-amz-content-sha256 header ({}) is not the SHA-256 of the body received ({actual})",
                claimed.trim()
            )));
        }
    }
    let expected = signature(auth, req, secret)?;
    let (a, b) = (expected.as_bytes(), auth.signature.as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if same {
        Ok(())
    } else {
        Err(VerifyError::Mismatch(
            "AWS was not able to validate the provided access credentials: the request signature we calculated does not match the signature you provided".into(),
        ))
    }
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's documented example (IAM ListUsers, GET) from the SigV4 guide.
    #[test]
    fn aws_documented_example_verifies() {
        let header = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7";
        let auth = parse(header).unwrap();
        assert_eq!(auth.access_key, "AKIDEXAMPLE");
        assert_eq!(auth.region, "us-east-1");
        let req = Request {
            method: "GET",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            headers: vec![
                ("Host".into(), "iam.amazonaws.com".into()),
                (
                    "Content-Type".into(),
                    "application/x-www-form-urlencoded; charset=utf-8".into(),
                ),
                ("X-Amz-Date".into(), "20150830T123600Z".into()),
            ],
            body: b"",
        };
        let signed_at = chrono::DateTime::parse_from_rfc3339("2015-08-30T12:36:00Z")
            .unwrap()
            .to_utc();
        verify(
            &auth,
            &req,
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            signed_at,
        )
        .unwrap();
        let e = verify(&auth, &req, "wrong", signed_at).unwrap_err();
        assert_eq!(e.code(), ErrorCode::AuthFailure);
        // Within 15 minutes either way: fine; beyond: RequestExpired.
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        for minutes in [-14, 14] {
            verify(
                &auth,
                &req,
                secret,
                signed_at + chrono::TimeDelta::minutes(minutes),
            )
            .unwrap();
        }
        for minutes in [-16, 16, 60, 60 * 24 * 30] {
            let e = verify(
                &auth,
                &req,
                secret,
                signed_at + chrono::TimeDelta::minutes(minutes),
            )
            .unwrap_err();
            assert_eq!(e.code(), ErrorCode::RequestExpired, "{minutes} min: {e}");
        }
        // The payload hash is the body's: swapping the body breaks the signature,
        // and claiming the old body's hash in x-amz-content-sha256 does not help.
        let swapped = Request {
            body: b"Action=TerminateInstances",
            headers: req
                .headers
                .iter()
                .cloned()
                .chain([(
                    "x-amz-content-sha256".to_string(),
                    hex::encode(Sha256::digest(b"")),
                )])
                .collect(),
            ..req
        };
        let e = verify(&auth, &swapped, secret, signed_at).unwrap_err();
        assert_eq!(e.code(), ErrorCode::AuthFailure);
        assert!(e.to_string().contains("x-amz-content-sha256"), "{e}");
    }

    #[test]
    fn malformed_headers_are_refused() {
        assert!(parse("Basic abc").is_err());
        assert!(
            parse("AWS4-HMAC-SHA256 Credential=a/b/c, SignedHeaders=host, Signature=00").is_err()
        );
        assert!(parse("AWS4-HMAC-SHA256 SignedHeaders=host").is_err());
    }
}
