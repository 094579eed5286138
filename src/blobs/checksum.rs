//! What a fetched image must hash to: an inline sha256 or the vendor's
//! checksum file (GNU, BSD or single-digest), parsed here.

use super::{is_hex, store_err, ImageError, CHUNK};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use url::Url;

/// Digest algorithms a checksum may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub(super) fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// By length of the hex digest.
    pub(super) fn from_hex_len(len: usize) -> Option<Self> {
        match len {
            64 => Some(Algorithm::Sha256),
            128 => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

/// The digest a source must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ExpectedDigest {
    pub(super) algorithm: Algorithm,
    /// Lower-case hex.
    pub(super) hex: String,
}

impl ExpectedDigest {
    pub(super) fn inline_sha256(hex: &str, url: &Url) -> Result<Self, ImageError> {
        let hex = hex.trim();
        if !is_hex(hex, 64) {
            return Err(ImageError::InvalidDigest {
                url: url.to_string(),
                digest: hex.to_owned(),
            });
        }
        Ok(Self {
            algorithm: Algorithm::Sha256,
            hex: hex.to_ascii_lowercase(),
        })
    }

    pub(super) fn from_hex(hex: &str) -> Option<Self> {
        let algorithm = Algorithm::from_hex_len(hex.len())?;
        is_hex(hex, hex.len()).then(|| Self {
            algorithm,
            hex: hex.to_ascii_lowercase(),
        })
    }
}

/// The digest listed for `file_name` in a checksum file.
///
/// Understands GNU coreutils lines (`<hex>  name`, `<hex> *name`), BSD lines
/// (`SHA256 (name) = <hex>`, also SHA512), and a file holding a single digest
/// (`<hex>` alone, or one GNU line whatever its name). sha256 or sha512 is
/// told from the digest's length. Comments (`#`), blank lines, the PGP
/// wrapper of a clear-signed file and lines about other files are skipped.
/// An exact name match wins over a match of the last path component
/// (`./name`, `dir/name`).
pub(super) fn find_digest(text: &str, file_name: &str) -> Option<ExpectedDigest> {
    let mut by_basename = None;
    let mut gnu_or_bare = Vec::new();
    let mut in_signature = false;
    for raw in text.lines() {
        let mut line = raw.trim();
        if line == "-----BEGIN PGP SIGNATURE-----" {
            in_signature = true;
            continue;
        }
        if line == "-----END PGP SIGNATURE-----" {
            in_signature = false;
            continue;
        }
        // Dash-escaped lines of a clear-signed message.
        if let Some(rest) = line.strip_prefix("- ") {
            line = rest.trim();
        }
        if in_signature
            || line.is_empty()
            || line.starts_with('#')
            || line.starts_with("-----")
            || line.starts_with("Hash:")
        {
            continue;
        }
        let Some((name, hex, gnu)) = parse_bsd(line).or_else(|| parse_gnu(line)) else {
            continue;
        };
        let Some(digest) = ExpectedDigest::from_hex(hex) else {
            continue;
        };
        if gnu {
            gnu_or_bare.push(digest.clone());
        }
        match name {
            Some(n) if n == file_name => return Some(digest),
            Some(n) if n.rsplit('/').next() == Some(file_name) => {
                by_basename.get_or_insert(digest);
            }
            _ => {}
        }
    }
    by_basename.or_else(|| match gnu_or_bare.as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    })
}

/// `ALGO (name) = hex` -> (name, hex, false). Algorithms other than SHA256
/// and SHA512 are recognised so their lines are skipped, not misread.
pub(super) fn parse_bsd(line: &str) -> Option<(Option<&str>, &str, bool)> {
    let (algo, rest) = line.split_once(" (")?;
    let (name, hex) = rest.rsplit_once(") =")?;
    let hex = hex.trim();
    let len_ok = match algo.to_ascii_uppercase().as_str() {
        "SHA256" => hex.len() == 64,
        "SHA512" => hex.len() == 128,
        _ => false,
    };
    len_ok.then_some((Some(name), hex, false))
}

/// `hex  name`, `hex *name` or `hex` alone -> (name, hex, true).
pub(super) fn parse_gnu(line: &str) -> Option<(Option<&str>, &str, bool)> {
    let (hex, name) = match line.split_once(char::is_whitespace) {
        Some((hex, rest)) => {
            let rest = rest.trim_start();
            let name = rest.strip_prefix('*').unwrap_or(rest);
            (hex, Some(name.strip_prefix("./").unwrap_or(name)))
        }
        None => (line, None),
    };
    Algorithm::from_hex_len(hex.len())?;
    is_hex(hex, hex.len()).then_some((name, hex, true))
}

pub(super) fn sha256_of_file(path: &Path) -> Result<String, ImageError> {
    let mut file = File::open(path).map_err(|source| store_err(path, source))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(store_err(path, e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A256: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B256: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn sha512(c: char) -> String {
        c.to_string().repeat(128)
    }

    fn d256(hex: &str) -> Option<ExpectedDigest> {
        Some(ExpectedDigest {
            algorithm: Algorithm::Sha256,
            hex: hex.to_owned(),
        })
    }

    #[test]
    fn gnu_checksum_lines() {
        let text = format!(
            "# comment\n{A256}  debian-12.qcow2\n{B256} *debian-12.raw\n\n{A256}  ./other.img\n"
        );
        assert_eq!(find_digest(&text, "debian-12.raw"), d256(B256));
        assert_eq!(find_digest(&text, "debian-12.qcow2"), d256(A256));
        assert_eq!(find_digest(&text, "other.img"), d256(A256));
        assert_eq!(find_digest(&text, "missing.img"), None);
    }

    #[test]
    fn exact_name_wins_over_basename() {
        let text = format!("{A256}  daily/disk.img\n{B256}  disk.img\n");
        assert_eq!(find_digest(&text, "disk.img"), d256(B256));
        let text = format!("{A256}  daily/disk.img\n{B256}  other.img\n");
        assert_eq!(find_digest(&text, "disk.img"), d256(A256));
    }

    #[test]
    fn sha512_is_told_by_length() {
        let h = sha512('c');
        let text = format!("{h}  debian-12-genericcloud-amd64.qcow2\n");
        let d = find_digest(&text, "debian-12-genericcloud-amd64.qcow2").unwrap();
        assert_eq!(d.algorithm, Algorithm::Sha512);
        assert_eq!(d.hex, h);
    }

    #[test]
    fn bsd_lines_in_a_signed_fedora_checksum_file() {
        let h512 = sha512('d');
        let text = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n\
             # Fedora-Cloud-Base-40-1.14.x86_64.qcow2: 397475840 bytes\n\
             MD5 (Fedora-Cloud-Base-40-1.14.x86_64.qcow2) = 0123456789abcdef0123456789abcdef\n\
             SHA256 (Fedora-Cloud-Base-40-1.14.x86_64.raw.xz) = {B256}\n\
             SHA256 (Fedora-Cloud-Base-40-1.14.x86_64.qcow2) = {A256}\n\
             SHA512 (Fedora-Cloud-Base-40-1.14.aarch64.qcow2) = {h512}\n\
             -----BEGIN PGP SIGNATURE-----\n\n\
             iQIzBAEBCAAdFiEEFz2fCq0+qfj4bHk0\n{A256}\n\
             -----END PGP SIGNATURE-----\n"
        );
        assert_eq!(
            find_digest(&text, "Fedora-Cloud-Base-40-1.14.x86_64.qcow2"),
            d256(A256)
        );
        let d = find_digest(&text, "Fedora-Cloud-Base-40-1.14.aarch64.qcow2").unwrap();
        assert_eq!((d.algorithm, d.hex), (Algorithm::Sha512, h512));
        // The digest-looking line inside the signature is not a single-digest file.
        assert_eq!(find_digest(&text, "nothing.qcow2"), None);
    }

    #[test]
    fn single_digest_files() {
        assert_eq!(find_digest(&format!("{A256}\n"), "x.img"), d256(A256));
        assert_eq!(
            find_digest(&format!("{}\n", A256.to_uppercase()), "x.img"),
            d256(A256)
        );
        assert_eq!(
            find_digest(&format!("{A256}  build-20240101.img\n"), "latest.img"),
            d256(A256)
        );
        // Two entries for other files: no guessing.
        assert_eq!(
            find_digest(&format!("{A256}  a.img\n{B256}  b.img\n"), "c.img"),
            None
        );
        // Garbage and wrong lengths are skipped.
        assert_eq!(find_digest("abc  x.img\nnot a digest\n", "x.img"), None);
    }

    #[test]
    fn crlf_and_dash_escaped_lines() {
        let text = format!("- {A256}  x.img\r\n{B256}  y.img\r\n");
        assert_eq!(find_digest(&text, "x.img"), d256(A256));
        assert_eq!(find_digest(&text, "y.img"), d256(B256));
    }

    #[test]
    fn inline_digest_must_be_sha256() {
        let u = Url::parse("file:///x").unwrap();
        assert!(ExpectedDigest::inline_sha256("abc", &u).is_err());
        assert_eq!(
            ExpectedDigest::inline_sha256(&A256.to_uppercase(), &u).unwrap(),
            d256(A256).unwrap()
        );
    }
}
