//! Which image sources a caller may name: API callers never name host paths.
//!
//! The CLI acts as the local user, who can read their own files anyway, so
//! it may import from any `file://`, `http://` or `https://` URL
//! ([`ImportPolicy::LocalUser`]). A caller over HTTP is someone else: it may
//! name `http(s)://` URLs, and `file://` URLs only below the directory the
//! operator named with `amirun serve --import-dir DIR` (a stand-in for an S3
//! bucket), never anything else on the host ([`ImportPolicy::Remote`]).
//!
//! Every import entry point (ImportImage, ImportSnapshot, RegisterImage's
//! ImageLocation) makes one call to [`ImportPolicy::admit`] before fetching.
//!
//! Paths are checked by canonicalizing them (every `..` and symlink
//! resolved) and comparing the result with the canonical import directory;
//! the canonical path is what gets fetched, so a symlink inside the import
//! directory that points out of it is refused, and one that stays inside is
//! followed once, here. What is left is the window between this check and
//! the open: only someone who can write into the import directory could
//! swap a component for a symlink in it. API callers cannot (there is no
//! upload action), so the directory must simply not be writable by anyone
//! the operator does not trust; this is documented for `--import-dir`.
//! (Opening with `openat2(RESOLVE_BENEATH)` would close the window but needs
//! the blob fetcher to take an open file instead of a URL.)

use super::{Error, Result};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// What image sources a caller may name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ImportPolicy {
    /// The local user (CLI): any `file://`, `http://` or `https://` URL.
    #[default]
    LocalUser,
    /// An API caller: `http(s)://` URLs, and `file://` URLs only below
    /// `import_dir` (none at all when it is `None`).
    Remote { import_dir: Option<PathBuf> },
}

impl ImportPolicy {
    /// Check the source URL given as `member` (e.g. `DiskContainer.1.Url`)
    /// and return the URL to fetch: unchanged, or for a `file://` URL under
    /// [`ImportPolicy::Remote`], the canonical path (no `..`, no symlinks).
    /// Refusals are `InvalidParameterValue` naming the URL and what is allowed.
    pub fn admit(&self, member: &str, raw: &str) -> Result<String> {
        let ImportPolicy::Remote { import_dir } = self else {
            return Ok(raw.to_string());
        };
        let allowed = match import_dir {
            Some(d) => format!(
                "http:// and https:// URLs, or file:// URLs under the import directory {}",
                d.display()
            ),
            None => "http:// and https:// URLs (this server has no import directory; \
                     its operator can name one with `amirun serve --import-dir DIR`)"
                .to_string(),
        };
        let refuse = |why: &str| {
            Error::invalid_value(format!(
                "The URL '{raw}' given as {member} is not allowed{why}; API callers may use {allowed}"
            ))
        };
        let url = url::Url::parse(raw).map_err(|_| refuse(": it is not a URL"))?;
        match url.scheme() {
            "http" | "https" => {
                if is_link_local(&url) {
                    return Err(refuse(
                        " (link-local addresses, where cloud metadata services live, are refused)",
                    ));
                }
                Ok(raw.to_string())
            }
            "file" => {
                let Some(dir) = import_dir else {
                    return Err(refuse(""));
                };
                if url.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(refuse(": a file URL must not name a host"));
                }
                let path = url.to_file_path().map_err(|()| refuse(""))?;
                let real = within(dir, &path).map_err(|why| refuse(&why))?;
                let fetched = url::Url::from_file_path(&real).map_err(|()| refuse(""))?;
                Ok(fetched.to_string())
            }
            _ => Err(refuse("")),
        }
    }
}

/// The canonical form of `path` when it is a regular file inside `dir`
/// (after resolving `..` and symlinks), else why not (a message fragment).
fn within(dir: &Path, path: &Path) -> std::result::Result<PathBuf, String> {
    let root = dir
        .canonicalize()
        .map_err(|e| format!(" (the import directory cannot be resolved: {e})"))?;
    let real = path
        .canonicalize()
        .map_err(|_| " (no such file under the import directory)".to_string())?;
    if !real.starts_with(&root) || real == root {
        return Err(" (it is outside the import directory)".into());
    }
    if !std::fs::metadata(&real).is_ok_and(|m| m.is_file()) {
        return Err(" (it is not a regular file)".into());
    }
    Ok(real)
}

/// Whether the URL's host is a link-local address literal (169.254.0.0/16,
/// fe80::/10), where cloud providers answer instance metadata requests.
fn is_link_local(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(a)) => a.is_link_local(),
        Some(url::Host::Ipv6(a)) => (a.segments()[0] & 0xffc0) == 0xfe80,
        Some(url::Host::Domain(d)) => d
            .parse::<IpAddr>()
            .is_ok_and(|ip| matches!(ip, IpAddr::V4(a) if a.is_link_local())),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(dir: &Path) -> ImportPolicy {
        ImportPolicy::Remote {
            import_dir: Some(dir.to_path_buf()),
        }
    }

    #[test]
    fn local_user_may_name_any_file() {
        let p = ImportPolicy::LocalUser;
        assert_eq!(
            p.admit("Url", "file:///etc/shadow").unwrap(),
            "file:///etc/shadow"
        );
    }

    #[test]
    fn remote_callers_get_http_and_the_import_dir_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("imports");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/disk.raw"), b"x").unwrap();
        std::fs::write(tmp.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), dir.join("escape")).unwrap();
        std::os::unix::fs::symlink(dir.join("sub/disk.raw"), dir.join("inside")).unwrap();
        let p = remote(&dir);
        let real = dir.canonicalize().unwrap().join("sub/disk.raw");
        let ok = p
            .admit(
                "Url",
                &format!("file://{}", dir.join("sub/disk.raw").display()),
            )
            .unwrap();
        assert_eq!(ok, url::Url::from_file_path(&real).unwrap().to_string());
        // A symlink that stays inside is resolved to its target.
        let ok = p
            .admit("Url", &format!("file://{}", dir.join("inside").display()))
            .unwrap();
        assert_eq!(ok, url::Url::from_file_path(&real).unwrap().to_string());
        for bad in [
            "file:///etc/shadow".to_string(),
            format!("file://{}/sub/../../secret", dir.display()),
            format!("file://{}", dir.join("escape").display()),
            format!("file://{}", dir.display()),
            format!("file://{}", dir.join("sub").display()),
            "ftp://example.com/x".into(),
            "http://169.254.169.254/latest/meta-data/".into(),
            "http://[fe80::1]/x".into(),
            "not a url".into(),
        ] {
            let e = p.admit("DiskContainer.1.Url", &bad).unwrap_err();
            assert_eq!(e.code(), "InvalidParameterValue", "{bad}");
            assert!(e.message().contains("DiskContainer.1.Url"), "{e}");
            assert!(e.message().contains("import directory"), "{e}");
        }
        assert_eq!(
            p.admit("Url", "http://127.0.0.1:8000/d.raw").unwrap(),
            "http://127.0.0.1:8000/d.raw"
        );
        let none = ImportPolicy::Remote { import_dir: None };
        let e = none
            .admit("ImageLocation", &format!("file://{}", real.display()))
            .unwrap_err();
        assert!(e.message().contains("--import-dir"), "{e}");
    }
}
