//! Key pairs: create (amirun keeps the private key so `amirun ssh` can log
//! in), import a public key, describe, delete.

use super::{now, Caller, Error, Result, Service};
use crate::ids::{self, IdKind};
use crate::store::KeyPairState;
use serde::Serialize;

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
}

/// What `create-key-pair` returns: the private key, once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreatedKeyPair {
    pub key_fingerprint: String,
    pub key_material: String,
    pub key_name: String,
    pub key_pair_id: String,
}

fn check_key_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 || !name.is_ascii() {
        return Err(Error::invalid_value(format!(
            "Key name '{name}' must be 1 to 255 ASCII characters"
        )));
    }
    Ok(())
}

/// EC2-style fingerprint: MD5 (colon hex) for RSA, SHA-256 (base64) for ed25519.
fn fingerprint(public: &ssh_key::PublicKey) -> Result<String> {
    use base64::Engine;
    use md5::Digest;
    let blob = public
        .to_bytes()
        .map_err(|e| Error::new("InternalError", "Cannot encode a public key").with_source(e))?;
    Ok(match public.algorithm() {
        ssh_key::Algorithm::Ed25519 => {
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&blob))
        }
        _ => md5::Md5::digest(&blob)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    })
}

/// A 2048-bit RSA key in PEM (`BEGIN RSA PRIVATE KEY`, as EC2 hands out), made by ssh-keygen.
fn rsa_with_ssh_keygen() -> Result<(String, ssh_key::PublicKey)> {
    let dir = tempfile::tempdir().map_err(|e| {
        Error::new("InternalError", "Cannot make a temporary directory").with_source(e)
    })?;
    let key = dir.path().join("key");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-C", "", "-f"])
        .arg(&key)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            Error::new(
                "MissingDependency",
                "ssh-keygen is needed for RSA key pairs; install the Debian package openssh-client or use --key-type ed25519",
            )
            .with_source(e)
        })?;
    if !out.status.success() {
        return Err(Error::new(
            "InternalError",
            format!(
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| {
            Error::new("InternalError", format!("Cannot read {}", p.display())).with_source(e)
        })
    };
    let material = read(&key)?;
    let public = ssh_key::PublicKey::from_openssh(read(&key.with_extension("pub"))?.trim())
        .map_err(|e| {
            Error::new("InternalError", "ssh-keygen wrote an unreadable public key").with_source(e)
        })?;
    Ok((material, public))
}

fn info(k: &KeyPairState, include_public: bool) -> KeyPairInfo {
    KeyPairInfo {
        key_pair_id: k.key_pair_id.clone(),
        key_fingerprint: k.fingerprint.clone(),
        key_name: k.key_name.clone(),
        key_type: k.key_type.clone(),
        create_time: k.create_time.clone(),
        public_key: include_public.then(|| k.public_key.clone()),
    }
}

impl Service {
    /// `CreateKeyPair` (`rsa` by default, as EC2; `ed25519` is faster).
    pub fn create_key_pair(
        &mut self,
        caller: &Caller,
        key_name: &str,
        key_type: Option<&str>,
    ) -> Result<CreatedKeyPair> {
        check_key_name(key_name)?;
        let key_type = key_type.unwrap_or("rsa");
        let (material, public) = match key_type {
            "ed25519" => {
                let private = ssh_key::PrivateKey::random(
                    &mut rand::rngs::OsRng,
                    ssh_key::Algorithm::Ed25519,
                )
                .map_err(|e| {
                    Error::new("InternalError", "Cannot generate a key pair").with_source(e)
                })?;
                let material = private
                    .to_openssh(ssh_key::LineEnding::LF)
                    .map_err(|e| {
                        Error::new("InternalError", "Cannot encode a private key").with_source(e)
                    })?
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
            owner_id: caller.account.clone(),
            key_name: key_name.to_string(),
            key_type: key_type.to_string(),
            fingerprint: fingerprint(&public)?,
            public_key: public.to_openssh().map_err(|e| {
                Error::new("InternalError", "Cannot encode a public key").with_source(e)
            })?,
            private_key: Some(material.clone()),
            create_time: now(),
        };
        self.insert_key_pair(caller, &state)?;
        Ok(CreatedKeyPair {
            key_fingerprint: state.fingerprint,
            key_material: material,
            key_name: state.key_name,
            key_pair_id: state.key_pair_id,
        })
    }

    fn insert_key_pair(&mut self, caller: &Caller, state: &KeyPairState) -> Result<()> {
        self.store.write(|db| -> Result<()> {
            if db
                .key_pairs(&caller.region, &caller.account)?
                .iter()
                .any(|k| k.key_name == state.key_name)
            {
                return Err(Error::new(
                    "InvalidKeyPair.Duplicate",
                    format!("The keypair '{}' already exists.", state.key_name),
                ));
            }
            db.insert_key_pair(state)?;
            Ok(())
        })
    }

    /// `ImportKeyPair` from an OpenSSH public key line.
    pub fn import_key_pair(
        &mut self,
        caller: &Caller,
        key_name: &str,
        public_key: &str,
    ) -> Result<KeyPairInfo> {
        check_key_name(key_name)?;
        let public = ssh_key::PublicKey::from_openssh(public_key.trim()).map_err(|e| {
            Error::new(
                "InvalidKey.Format",
                format!("Key '{key_name}' is not an OpenSSH public key (ssh-rsa or ssh-ed25519 AAAA… line)"),
            )
            .with_source(e)
        })?;
        let key_type = match public.algorithm() {
            ssh_key::Algorithm::Ed25519 => "ed25519",
            ssh_key::Algorithm::Rsa { .. } => "rsa",
            other => {
                return Err(Error::new(
                    "InvalidKey.Format",
                    format!("Key type {other} is not supported; use rsa or ed25519"),
                ))
            }
        };
        let state = KeyPairState {
            key_pair_id: ids::new_id(IdKind::KeyPair),
            region: caller.region.clone(),
            owner_id: caller.account.clone(),
            key_name: key_name.to_string(),
            key_type: key_type.into(),
            fingerprint: fingerprint(&public)?,
            public_key: public_key.trim().to_string(),
            private_key: None,
            create_time: now(),
        };
        self.insert_key_pair(caller, &state)?;
        Ok(info(&state, false))
    }

    /// `DescribeKeyPairs`.
    pub fn describe_key_pairs(
        &mut self,
        caller: &Caller,
        names: &[String],
        include_public: bool,
    ) -> Result<Vec<KeyPairInfo>> {
        let all = self
            .store
            .read(|db| db.key_pairs(&caller.region, &caller.account))?;
        if let Some(missing) = names
            .iter()
            .find(|n| !all.iter().any(|k| &k.key_name == *n))
        {
            return Err(key_not_found(missing));
        }
        Ok(all
            .iter()
            .filter(|k| names.is_empty() || names.contains(&k.key_name))
            .map(|k| info(k, include_public))
            .collect())
    }

    /// `DeleteKeyPair` (succeeds when it does not exist, as EC2).
    pub fn delete_key_pair(&mut self, caller: &Caller, key_name: &str) -> Result<()> {
        self.store
            .write(|db| db.delete_key_pair(&caller.region, &caller.account, key_name))?;
        Ok(())
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
        "InvalidKeyPair.NotFound",
        format!("The key pair '{name}' does not exist"),
    )
}
