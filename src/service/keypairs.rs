//! Key pairs: create (amirun keeps the private key so `amirun ssh` can log
//! in), import a public key, describe, delete.
//!
//! Fingerprints follow EC2's rules: a created RSA key is the SHA-1 of its
//! DER PKCS#8 private key, an imported RSA key the MD5 of its DER
//! SubjectPublicKeyInfo (both colon hex), an ed25519 key the base64 SHA-256
//! of its OpenSSH public key blob. Imports take an OpenSSH line, an RFC 4716
//! (`---- BEGIN SSH2 PUBLIC KEY ----`) block, or a PEM/DER RSA public key.

use super::filter;
use super::shapes::{Filter, Tag, TagSpecification};
use super::{now, Caller, Error, ErrorCode, Result, Service};
use crate::domain::Base64Blob;
use crate::ids::{self, IdKind};
use crate::store::KeyPairState;
use base64::Engine;
use serde::{Deserialize, Serialize};

const KEY_PAIR_FILTERS: &[&str] = &[
    "key-name",
    "key-pair-id",
    "fingerprint",
    "key-type",
    "tag-key",
];

/// A key pair as `describe-key-pairs` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyPairInfo {
    pub key_pair_id: String,
    pub key_fingerprint: String,
    pub key_name: String,
    pub key_type: String,
    pub create_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    pub tags: Vec<Tag>,
}

/// `CreateKeyPair`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CreateKeyPairRequest {
    pub key_name: String,
    /// `rsa` (default) or `ed25519`.
    #[serde(default)]
    pub key_type: Option<String>,
    #[serde(default)]
    pub tag_specifications: Vec<TagSpecification>,
}

/// `ImportKeyPair`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ImportKeyPairRequest {
    pub key_name: String,
    /// An OpenSSH line, an RFC 4716 block, or a PEM/DER RSA public key.
    pub public_key_material: Base64Blob,
    #[serde(default)]
    pub tag_specifications: Vec<TagSpecification>,
}

/// What `ImportKeyPair` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImportKeyPairResult {
    pub key_fingerprint: String,
    pub key_name: String,
    pub key_pair_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

/// `DescribeKeyPairs`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeKeyPairsRequest {
    #[serde(default)]
    pub key_names: Vec<String>,
    #[serde(default)]
    pub key_pair_ids: Vec<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub include_public_key: Option<bool>,
}

/// What `DescribeKeyPairs` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeKeyPairsResult {
    pub key_pairs: Vec<KeyPairInfo>,
}

/// `DeleteKeyPair`: by name or by id.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DeleteKeyPairRequest {
    #[serde(default)]
    pub key_name: Option<String>,
    #[serde(default)]
    pub key_pair_id: Option<String>,
}

/// What `DeleteKeyPair` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteKeyPairResult {
    #[serde(rename = "Return")]
    pub ret: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_pair_id: Option<String>,
}

/// What `CreateKeyPair` returns (botocore's `KeyPair`): the private key, once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyPair {
    pub key_fingerprint: String,
    pub key_material: String,
    pub key_name: String,
    pub key_pair_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

fn check_key_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 || !name.is_ascii() {
        return Err(Error::invalid_value(format!(
            "Key name '{name}' must be 1 to 255 ASCII characters"
        )));
    }
    Ok(())
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// EC2's fingerprint of an imported key: MD5 (colon hex) of the DER
/// SubjectPublicKeyInfo for RSA, SHA-256 (base64) of the key blob for ed25519.
fn fingerprint(public: &ssh_key::PublicKey) -> Result<String> {
    use md5::Digest;
    let blob = public
        .to_bytes()
        .map_err(|e| Error::internal("Cannot encode a public key").with_source(e))?;
    Ok(match public.key_data().rsa() {
        Some(rsa) => colon_hex(&md5::Md5::digest(der::rsa_spki(rsa)?)),
        None => base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&blob)),
    })
}

/// EC2's fingerprint of an RSA key pair it created: SHA-1 (colon hex) of the
/// DER PKCS#8 form of the private key (`BEGIN RSA PRIVATE KEY` is PKCS#1).
fn created_rsa_fingerprint(pkcs1_pem: &str) -> Result<String> {
    use sha1::Digest;
    let body: String = pkcs1_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let pkcs1 = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|e| {
            Error::internal("ssh-keygen wrote an unreadable private key").with_source(e)
        })?;
    Ok(colon_hex(&sha1::Sha1::digest(der::pkcs8_from_pkcs1(
        &pkcs1,
    ))))
}

/// A public key as EC2's ImportKeyPair takes it: an OpenSSH line, an RFC 4716
/// block, or an RSA public key as PEM (`BEGIN PUBLIC KEY` / `BEGIN RSA PUBLIC
/// KEY`) or DER.
fn parse_public_key(material: &[u8]) -> std::result::Result<ssh_key::PublicKey, String> {
    let text = String::from_utf8_lossy(material);
    let text = text.trim();
    let b64 = |s: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| format!("invalid base64: {e}"))
    };
    if text.starts_with("---- BEGIN SSH2 PUBLIC KEY ----") {
        // RFC 4716: header lines ("Tag: value", continued with a trailing
        // backslash), then the base64 key blob, then the END line.
        let mut body = String::new();
        let mut continued = false;
        for line in text.lines().skip(1).map(str::trim) {
            if line.starts_with("---- END SSH2 PUBLIC KEY ----") {
                let blob = b64(&body)?;
                return ssh_key::PublicKey::from_bytes(&blob).map_err(|e| e.to_string());
            }
            if continued || line.contains(':') {
                continued = line.ends_with('\\');
                continue;
            }
            body.push_str(line);
        }
        return Err("no ---- END SSH2 PUBLIC KEY ---- line".into());
    }
    if let Some(rest) = text.strip_prefix("-----BEGIN ") {
        let (label, _) = rest
            .split_once("-----")
            .ok_or("a PEM header without its end")?;
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let der_bytes = b64(body.trim())?;
        return match label {
            "PUBLIC KEY" => der::rsa_from_spki(&der_bytes),
            "RSA PUBLIC KEY" => der::rsa_from_pkcs1(&der_bytes),
            other => Err(format!("a PEM {other}, not a public key")),
        };
    }
    if material.first() == Some(&0x30) {
        return der::rsa_from_spki(material);
    }
    ssh_key::PublicKey::from_openssh(text).map_err(|e| e.to_string())
}

/// Just enough DER for RSA keys: SubjectPublicKeyInfo and PKCS#8 wrappers.
mod der {
    use super::{Error, ErrorCode, Result};

    const RSA_ALGORITHM: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];

    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = body.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes: Vec<u8> = n
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(body);
        out
    }

    fn uint(bytes: &[u8]) -> Vec<u8> {
        let bytes: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
        let mut body = Vec::new();
        if bytes.first().is_none_or(|b| b & 0x80 != 0) {
            body.push(0);
        }
        body.extend(bytes);
        tlv(0x02, &body)
    }

    /// DER SubjectPublicKeyInfo of an RSA public key.
    pub fn rsa_spki(key: &ssh_key::public::RsaPublicKey) -> Result<Vec<u8>> {
        let part = |m: &ssh_key::Mpint| {
            m.as_positive_bytes().map(uint).ok_or_else(|| {
                Error::new(ErrorCode::InvalidKeyFormat, "An RSA key part is negative")
            })
        };
        let pkcs1 = tlv(0x30, &[part(&key.n)?, part(&key.e)?].concat());
        let mut bits = vec![0u8];
        bits.extend(pkcs1);
        Ok(tlv(
            0x30,
            &[RSA_ALGORITHM.to_vec(), tlv(0x03, &bits)].concat(),
        ))
    }

    /// PKCS#8 PrivateKeyInfo around a PKCS#1 RSAPrivateKey.
    pub fn pkcs8_from_pkcs1(pkcs1: &[u8]) -> Vec<u8> {
        let body = [
            vec![0x02, 0x01, 0x00],
            RSA_ALGORITHM.to_vec(),
            tlv(0x04, pkcs1),
        ]
        .concat();
        tlv(0x30, &body)
    }

    /// One TLV at the start of `input`: (tag, body, rest).
    fn read(input: &[u8]) -> std::result::Result<(u8, &[u8], &[u8]), String> {
        let bad = || "truncated DER".to_string();
        let (&tag, rest) = input.split_first().ok_or_else(bad)?;
        let (&first, mut rest) = rest.split_first().ok_or_else(bad)?;
        let len = if first < 0x80 {
            first as usize
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return Err(bad());
            }
            let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return Err(bad());
        }
        Ok((tag, &rest[..len], &rest[len..]))
    }

    /// An RSA public key from DER PKCS#1 RSAPublicKey.
    pub fn rsa_from_pkcs1(der: &[u8]) -> std::result::Result<ssh_key::PublicKey, String> {
        let (tag, seq, _) = read(der)?;
        let (t1, n, rest) = read(seq)?;
        let (t2, e, _) = read(rest)?;
        if tag != 0x30 || t1 != 0x02 || t2 != 0x02 {
            return Err("not an RSAPublicKey".into());
        }
        let mp = |b: &[u8]| {
            ssh_key::Mpint::from_positive_bytes(
                &b.iter()
                    .copied()
                    .skip_while(|x| *x == 0)
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| e.to_string())
        };
        let key = ssh_key::public::RsaPublicKey {
            e: mp(e)?,
            n: mp(n)?,
        };
        Ok(ssh_key::PublicKey::new(
            ssh_key::public::KeyData::Rsa(key),
            "",
        ))
    }

    /// An RSA public key from DER SubjectPublicKeyInfo.
    pub fn rsa_from_spki(der: &[u8]) -> std::result::Result<ssh_key::PublicKey, String> {
        let (tag, seq, _) = read(der)?;
        let (_, algorithm, rest) = read(seq)?;
        let (bit_tag, bits, _) = read(rest)?;
        if tag != 0x30
            || bit_tag != 0x03
            || !RSA_ALGORITHM[2..13].eq(&algorithm[..11.min(algorithm.len())])
        {
            return Err(
                "not an RSA SubjectPublicKeyInfo (only RSA keys are taken in PEM or DER)".into(),
            );
        }
        rsa_from_pkcs1(bits.get(1..).ok_or("empty BIT STRING")?)
    }
}

/// A 2048-bit RSA key in PEM (`BEGIN RSA PRIVATE KEY`, as EC2 hands out), made by ssh-keygen.
fn rsa_with_ssh_keygen() -> Result<(String, ssh_key::PublicKey)> {
    let dir = tempfile::tempdir()
        .map_err(|e| Error::internal("Cannot make a temporary directory").with_source(e))?;
    let key = dir.path().join("key");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-C", "", "-f"])
        .arg(&key)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            Error::new(
                ErrorCode::MissingDependency,
                "ssh-keygen is needed for RSA key pairs; install the Debian package openssh-client or use --key-type ed25519",
            )
            .with_source(e)
        })?;
    if !out.status.success() {
        return Err(Error::internal(format!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map_err(|e| Error::internal(format!("Cannot read {}", p.display())).with_source(e))
    };
    let material = read(&key)?;
    let public = ssh_key::PublicKey::from_openssh(read(&key.with_extension("pub"))?.trim())
        .map_err(|e| Error::internal("ssh-keygen wrote an unreadable public key").with_source(e))?;
    Ok((material, public))
}

/// The `key-pair` tags of a TagSpecifications list.
fn key_pair_tags(specs: &[TagSpecification]) -> Result<Vec<Tag>> {
    Ok(super::images::tags_for(specs, "key-pair")?
        .into_iter()
        .map(|(key, value)| Tag {
            key,
            value: Some(value),
        })
        .collect())
}

fn info(k: &KeyPairState, include_public: bool, tags: Vec<Tag>) -> KeyPairInfo {
    KeyPairInfo {
        key_pair_id: k.key_pair_id.clone(),
        key_fingerprint: k.fingerprint.clone(),
        key_name: k.key_name.clone(),
        key_type: k.key_type.clone(),
        create_time: k.create_time.clone(),
        public_key: include_public.then(|| k.public_key.clone()),
        tags,
    }
}

impl Service {
    /// `CreateKeyPair` (`rsa` by default, as EC2; `ed25519` is faster).
    pub fn create_key_pair(
        &mut self,
        caller: &Caller,
        input: CreateKeyPairRequest,
    ) -> Result<KeyPair> {
        let key_name = input.key_name.as_str();
        check_key_name(key_name)?;
        let tags = key_pair_tags(&input.tag_specifications)?;
        let key_type = input.key_type.as_deref().unwrap_or("rsa");
        let (material, public) = match key_type {
            "ed25519" => {
                let private = ssh_key::PrivateKey::random(
                    &mut rand::rngs::OsRng,
                    ssh_key::Algorithm::Ed25519,
                )
                .map_err(|e| Error::internal("Cannot generate a key pair").with_source(e))?;
                let material = private
                    .to_openssh(ssh_key::LineEnding::LF)
                    .map_err(|e| Error::internal("Cannot encode a private key").with_source(e))?
                    .to_string();
                (material, private.public_key().clone())
            }
            "rsa" => rsa_with_ssh_keygen()?,
            other => {
                return Err(Error::invalid_value(format!(
                    "Value ({other}) for parameter KeyType is invalid; use rsa or ed25519"
                )))
            }
        };
        let state = KeyPairState {
            key_pair_id: ids::new_id(IdKind::KeyPair),
            region: caller.region.clone(),
            owner_id: caller.account.to_string(),
            key_name: key_name.to_string(),
            key_type: key_type.to_string(),
            fingerprint: if key_type == "rsa" {
                created_rsa_fingerprint(&material)?
            } else {
                fingerprint(&public)?
            },
            public_key: public
                .to_openssh()
                .map_err(|e| Error::internal("Cannot encode a public key").with_source(e))?,
            private_key: Some(material.clone()),
            create_time: now(),
        };
        self.insert_key_pair(caller, &state, &tags)?;
        Ok(KeyPair {
            key_fingerprint: state.fingerprint,
            key_material: material,
            key_name: state.key_name,
            key_pair_id: state.key_pair_id,
            tags,
        })
    }

    fn insert_key_pair(
        &mut self,
        caller: &Caller,
        state: &KeyPairState,
        tags: &[Tag],
    ) -> Result<()> {
        self.store.write(|db| -> Result<()> {
            if db
                .key_pairs(&caller.region, &caller.account)?
                .iter()
                .any(|k| k.key_name == state.key_name)
            {
                return Err(Error::new(
                    ErrorCode::InvalidKeyPairDuplicate,
                    format!("The keypair '{}' already exists.", state.key_name),
                ));
            }
            db.insert_key_pair(state)?;
            for t in tags {
                db.put_tag(&state.key_pair_id, &t.key, t.value.as_deref().unwrap_or(""))?;
            }
            Ok(())
        })
    }

    /// `ImportKeyPair` from an OpenSSH line, an RFC 4716 block, or a PEM/DER RSA key.
    pub fn import_key_pair(
        &mut self,
        caller: &Caller,
        input: ImportKeyPairRequest,
    ) -> Result<ImportKeyPairResult> {
        let (key_name, public_key) = (input.key_name.as_str(), input.public_key_material.bytes());
        check_key_name(key_name)?;
        let tags = key_pair_tags(&input.tag_specifications)?;
        let public = parse_public_key(public_key).map_err(|why| {
            Error::new(
                ErrorCode::InvalidKeyFormat,
                format!("Key '{key_name}' is not in a supported format ({why}); give an OpenSSH public key line, an RFC 4716 block, or a PEM/DER RSA public key"),
            )
        })?;
        let key_type = match public.algorithm() {
            ssh_key::Algorithm::Ed25519 => "ed25519",
            ssh_key::Algorithm::Rsa { .. } => "rsa",
            other => {
                return Err(Error::new(
                    ErrorCode::InvalidKeyFormat,
                    format!("Key type {other} is not supported; use rsa or ed25519"),
                ))
            }
        };
        let state = KeyPairState {
            key_pair_id: ids::new_id(IdKind::KeyPair),
            region: caller.region.clone(),
            owner_id: caller.account.to_string(),
            key_name: key_name.to_string(),
            key_type: key_type.into(),
            fingerprint: fingerprint(&public)?,
            // An OpenSSH line is kept as given (comment included); other
            // formats are stored as the OpenSSH line of the same key.
            public_key: match ssh_key::PublicKey::from_openssh(
                String::from_utf8_lossy(public_key).trim(),
            ) {
                Ok(_) => String::from_utf8_lossy(public_key).trim().to_string(),
                Err(_) => public
                    .to_openssh()
                    .map_err(|e| Error::internal("Cannot encode a public key").with_source(e))?,
            },
            private_key: None,
            create_time: now(),
        };
        self.insert_key_pair(caller, &state, &tags)?;
        Ok(ImportKeyPairResult {
            key_fingerprint: state.fingerprint,
            key_name: state.key_name,
            key_pair_id: state.key_pair_id,
            tags,
        })
    }

    /// `DescribeKeyPairs`: by name, by id, and by filter.
    pub fn describe_key_pairs(
        &mut self,
        caller: &Caller,
        input: DescribeKeyPairsRequest,
    ) -> Result<DescribeKeyPairsResult> {
        let include_public_key = input.include_public_key.unwrap_or(false);
        filter::check_names(&input.filters, KEY_PAIR_FILTERS)?;
        for id in &input.key_pair_ids {
            if !ids::is_well_formed(IdKind::KeyPair, id) {
                return Err(Error::new(
                    ErrorCode::InvalidKeyPairMalformed,
                    format!("Invalid id: \"{id}\" (expecting \"key-...\")"),
                ));
            }
        }
        let (all, tags) = self.store.read(|db| -> Result<_> {
            let all = db.key_pairs(&caller.region, &caller.account)?;
            let mut tags = Vec::new();
            for k in &all {
                tags.push(db.tags_of(&k.key_pair_id)?);
            }
            Ok((all, tags))
        })?;
        if let Some(missing) = input
            .key_names
            .iter()
            .find(|n| !all.iter().any(|k| &k.key_name == *n))
        {
            return Err(key_not_found(missing));
        }
        if let Some(missing) = input
            .key_pair_ids
            .iter()
            .find(|n| !all.iter().any(|k| &k.key_pair_id == *n))
        {
            return Err(key_not_found(missing));
        }
        let key_pairs = all
            .iter()
            .zip(tags)
            .filter(|(k, _)| input.key_names.is_empty() || input.key_names.contains(&k.key_name))
            .filter(|(k, _)| {
                input.key_pair_ids.is_empty() || input.key_pair_ids.contains(&k.key_pair_id)
            })
            .filter(|(k, tags)| {
                filter::matches(&input.filters, |name| match name {
                    "key-name" => vec![k.key_name.clone()],
                    "key-pair-id" => vec![k.key_pair_id.clone()],
                    "fingerprint" => vec![k.fingerprint.clone()],
                    "key-type" => vec![k.key_type.clone()],
                    "tag-key" => tags.iter().map(|t| t.key.clone()).collect(),
                    n => match n.strip_prefix("tag:") {
                        Some(key) => tags
                            .iter()
                            .filter(|t| t.key == key)
                            .map(|t| t.value.clone())
                            .collect(),
                        None => Vec::new(),
                    },
                })
            })
            .map(|(k, tags)| {
                let tags = tags
                    .into_iter()
                    .map(|t| Tag {
                        key: t.key,
                        value: Some(t.value),
                    })
                    .collect();
                info(k, include_public_key, tags)
            })
            .collect();
        Ok(DescribeKeyPairsResult { key_pairs })
    }

    /// `DeleteKeyPair` by name or id (succeeds when it does not exist, as EC2).
    pub fn delete_key_pair(
        &mut self,
        caller: &Caller,
        input: DeleteKeyPairRequest,
    ) -> Result<DeleteKeyPairResult> {
        if input.key_name.is_none() && input.key_pair_id.is_none() {
            return Err(Error::missing("KeyName"));
        }
        if let Some(id) = &input.key_pair_id {
            if !ids::is_well_formed(IdKind::KeyPair, id) {
                return Err(Error::new(
                    ErrorCode::InvalidKeyPairMalformed,
                    format!("Invalid id: \"{id}\" (expecting \"key-...\")"),
                ));
            }
        }
        self.store.write(|db| -> Result<DeleteKeyPairResult> {
            let pairs = db.key_pairs(&caller.region, &caller.account)?;
            let found = pairs.iter().find(|k| {
                input.key_name.as_ref().is_none_or(|n| *n == k.key_name)
                    && input
                        .key_pair_id
                        .as_ref()
                        .is_none_or(|i| *i == k.key_pair_id)
            });
            let Some(k) = found else {
                return Ok(DeleteKeyPairResult {
                    ret: true,
                    key_pair_id: None,
                });
            };
            for t in db.tags_of(&k.key_pair_id)? {
                db.delete_tag(&k.key_pair_id, &t.key, None)?;
            }
            db.delete_key_pair(&caller.region, &caller.account, &k.key_name)?;
            Ok(DeleteKeyPairResult {
                ret: true,
                key_pair_id: Some(k.key_pair_id.clone()),
            })
        })
    }

    /// A key pair with its private key, if amirun created it.
    pub fn key_pair(&mut self, caller: &Caller, key_name: &str) -> Result<KeyPairState> {
        self.store
            .read(|db| db.key_pairs(&caller.region, &caller.account))?
            .into_iter()
            .find(|k| k.key_name == key_name)
            .ok_or_else(|| key_not_found(key_name))
    }
}

/// `InvalidKeyPair.NotFound`.
pub(crate) fn key_not_found(name: &str) -> Error {
    Error::new(
        ErrorCode::InvalidKeyPairNotFound,
        format!("The key pair '{name}' does not exist"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4716_blocks_with_continued_headers_parse() {
        let key = ssh_key::PrivateKey::random(&mut rand::rngs::OsRng, ssh_key::Algorithm::Ed25519)
            .unwrap();
        let public = key.public_key();
        let b64 = base64::engine::general_purpose::STANDARD.encode(public.to_bytes().unwrap());
        let (a, b) = b64.split_at(30);
        let block = format!(
            "---- BEGIN SSH2 PUBLIC KEY ----\nComment: \"a long \\\ncomment\"\nx-private: yes\n{a}\n{b}\n---- END SSH2 PUBLIC KEY ----\n"
        );
        let parsed = parse_public_key(block.as_bytes()).unwrap();
        assert_eq!(parsed.key_data(), public.key_data());
        assert!(parse_public_key(b"---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n").is_err());
    }

    #[test]
    fn pkcs8_wrapping_is_der() {
        // A 3-byte PKCS#1 body: SEQUENCE { INTEGER 0, SEQUENCE { rsaEncryption, NULL }, OCTET STRING }.
        let out = der::pkcs8_from_pkcs1(&[1, 2, 3]);
        assert_eq!(out[0], 0x30);
        assert_eq!(out[1] as usize, out.len() - 2);
        assert_eq!(&out[out.len() - 5..], &[0x04, 3, 1, 2, 3]);
    }
}
