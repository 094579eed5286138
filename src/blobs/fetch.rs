//! Where the bytes come from: `file://` paths and `http(s)://` URLs (one
//! blocking HTTP client per fetch), streamed into a temp file while they
//! are hashed, and checksum files read with a size limit.

use super::progress::download_bar;
use super::{store_err, ImageError, Progress, CHECKSUM_FILE_LIMIT, CHUNK};
use sha2::{Digest, Sha256, Sha512};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

/// Where the bytes of a source come from.
pub(super) enum Origin {
    File(PathBuf),
    Http,
}

impl Origin {
    pub(super) fn parse(url: &Url) -> Result<Self, ImageError> {
        match url.scheme() {
            "file" => {
                url.to_file_path()
                    .map(Origin::File)
                    .map_err(|()| ImageError::UnsupportedUrl {
                        url: url.to_string(),
                    })
            }
            "http" | "https" => Ok(Origin::Http),
            _ => Err(ImageError::UnsupportedUrl {
                url: url.to_string(),
            }),
        }
    }

    /// A reader of the content and its length when known.
    pub(super) fn open(
        &self,
        url: &Url,
        client: &mut HttpClient,
    ) -> Result<(Box<dyn Read>, Option<u64>), ImageError> {
        match self {
            Origin::File(path) => {
                let unreadable = |source| ImageError::Unreadable {
                    path: path.clone(),
                    source,
                };
                let file = File::open(path).map_err(unreadable)?;
                let meta = file.metadata().map_err(unreadable)?;
                if meta.is_dir() {
                    return Err(unreadable(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "is a directory",
                    )));
                }
                Ok((Box::new(file), Some(meta.len())))
            }
            Origin::Http => {
                let response = client.get(url)?;
                let total = response.content_length();
                Ok((Box::new(response), total))
            }
        }
    }
}

/// A blocking HTTP client, built on first use.
#[derive(Default)]
pub(super) struct HttpClient(Option<reqwest::blocking::Client>);

impl HttpClient {
    /// GET `url`, failing on a non-success status.
    pub(super) fn get(&mut self, url: &Url) -> Result<reqwest::blocking::Response, ImageError> {
        let unreachable = |source| ImageError::Unreachable {
            url: url.to_string(),
            source,
        };
        let client = match &self.0 {
            Some(c) => c,
            None => {
                let c = reqwest::blocking::Client::builder()
                    .user_agent(concat!("amirun/", env!("CARGO_PKG_VERSION")))
                    .connect_timeout(Duration::from_secs(30))
                    // For the blocking client this bounds each wait (headers,
                    // and every read of the body), not the whole transfer.
                    .timeout(Duration::from_secs(120))
                    .build()
                    .map_err(unreachable)?;
                self.0.insert(c)
            }
        };
        let response = client.get(url.clone()).send().map_err(unreachable)?;
        let status = response.status();
        if !status.is_success() {
            return Err(ImageError::HttpStatus {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        Ok(response)
    }
}

/// Digests of a streamed source.
pub(super) struct Hashes {
    pub(super) sha256: String,
    pub(super) sha512: Option<String>,
}

/// Copy `reader` into `out`, hashing on the way and drawing progress.
pub(super) fn stream(
    mut reader: Box<dyn Read>,
    total: Option<u64>,
    (out, out_path): (&mut File, &Path),
    want_sha512: bool,
    url: &Url,
    origin: &Origin,
    progress: Progress,
) -> Result<Hashes, ImageError> {
    let read_err = |received, source| match origin {
        Origin::File(path) => ImageError::Unreadable {
            path: path.clone(),
            source,
        },
        Origin::Http => ImageError::Interrupted {
            url: url.to_string(),
            received,
            source,
        },
    };
    let bar = download_bar(url, total, progress);
    let mut sha256 = Sha256::new();
    let mut sha512 = want_sha512.then(Sha512::new);
    let mut buf = vec![0u8; CHUNK];
    let mut received: u64 = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(received, e)),
        };
        let chunk = &buf[..n];
        sha256.update(chunk);
        if let Some(h) = sha512.as_mut() {
            h.update(chunk);
        }
        out.write_all(chunk)
            .map_err(|source| store_err(out_path, source))?;
        received += n as u64;
        if let Some(b) = &bar {
            b.set_position(received);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(total) = total.filter(|&t| t != received) {
        return Err(read_err(
            received,
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("expected {total} bytes"),
            ),
        ));
    }
    Ok(Hashes {
        sha256: hex::encode(sha256.finalize()),
        sha512: sha512.map(|h| hex::encode(h.finalize())),
    })
}

/// Read a checksum file (file, http or https), refusing huge ones.
pub(super) fn read_checksum_file(url: &Url, client: &mut HttpClient) -> Result<String, ImageError> {
    let too_large = || ImageError::ChecksumFileTooLarge {
        checksum_url: url.to_string(),
    };
    let mut bytes = Vec::new();
    match Origin::parse(url)? {
        Origin::File(path) => {
            let file = File::open(&path).map_err(|source| ImageError::Unreadable {
                path: path.clone(),
                source,
            })?;
            file.take(CHECKSUM_FILE_LIMIT + 1)
                .read_to_end(&mut bytes)
                .map_err(|source| ImageError::Unreadable { path, source })?;
        }
        Origin::Http => {
            let response = client.get(url)?;
            response
                .take(CHECKSUM_FILE_LIMIT + 1)
                .read_to_end(&mut bytes)
                .map_err(|source| ImageError::Interrupted {
                    url: url.to_string(),
                    received: 0,
                    source,
                })?;
        }
    }
    if bytes.len() as u64 > CHECKSUM_FILE_LIMIT {
        return Err(too_large());
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The image's file name: the URL's last path segment, percent-decoded.
pub(super) fn file_name(url: &Url) -> String {
    let segment = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or_default();
    percent_decode(segment)
}

pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_percent_decoded() {
        let u = Url::parse("https://h/x/Fedora%2BCloud%20Base.qcow2?x=1").unwrap();
        assert_eq!(file_name(&u), "Fedora+Cloud Base.qcow2");
        assert_eq!(percent_decode("a%zzb%4"), "a%zzb%4");
    }
}
