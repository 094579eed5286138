//! AWS Signature Version 4, as far as amirun needs it.
//!
//! Every request's `Authorization` header is parsed: its access key picks
//! the account (see [`super::Credentials`]) and its credential scope names
//! the region the client is talking to. In strict mode the signature is
//! checked too: the canonical request is rebuilt from the client's own
//! `SignedHeaders` list, so whatever headers the client chose to sign are
//! the ones verified.

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

/// Why an `Authorization` header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

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
    let payload = req
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-amz-content-sha256"))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| hex::encode(Sha256::digest(req.body)));
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

/// Check the request's signature against `secret` (constant time).
pub fn verify(auth: &Authorization, req: &Request, secret: &str) -> Result<(), AuthError> {
    let expected = signature(auth, req, secret)?;
    let (a, b) = (expected.as_bytes(), auth.signature.as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if same {
        Ok(())
    } else {
        Err(AuthError(
            "The request signature we calculated does not match the signature you provided".into(),
        ))
    }
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
        verify(&auth, &req, "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY").unwrap();
        assert!(verify(&auth, &req, "wrong").is_err());
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
