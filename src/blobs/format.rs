//! What a fetched file is: its format detected from the content (never
//! from its name), checked against the declared one, refusing images that
//! would read other host files; and qemu's names for declared formats.

use super::{disk_err, ImageError, OPAQUE_FORMAT};
use crate::disk;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use url::Url;

/// Formats accepted from a source, by qemu's names (`vpc` is VHD).
pub(super) const SOURCE_FORMATS: &[&str] = &["qcow2", "raw", "vmdk", "vpc", "vhdx"];

/// Detect the format of a fetched file from its content, check it against
/// the declared one and refuse anything that reads other host files.
pub(super) fn detect_format(
    path: &Path,
    declared: Option<&str>,
    url: &Url,
) -> Result<String, ImageError> {
    if declared == Some(OPAQUE_FORMAT) {
        return Ok(OPAQUE_FORMAT.to_owned());
    }
    let mut info = disk::info(path).map_err(|source| disk_err(url, source))?;
    // A fixed-size VHD has its only header ("conectix") in the last 512
    // bytes, which qemu's probe does not look at: it says raw. (A source
    // declared raw is taken at its word.)
    if info.format == "raw" && declared != Some("raw") && has_vhd_footer(path) {
        if let Ok(vpc) = disk::info_as(path, "vpc") {
            info = vpc;
        }
    }
    let detected = info.format.clone();
    if let Some(declared) = declared {
        if declared != detected {
            return Err(ImageError::FormatMismatch {
                url: url.to_string(),
                declared: declared.to_owned(),
                detected,
            });
        }
    }
    if !SOURCE_FORMATS.contains(&detected.as_str()) {
        return Err(ImageError::UnsupportedFormat {
            url: url.to_string(),
            format: detected,
        });
    }
    if let Some(backing) = &info.backing_file {
        return Err(ImageError::NotSelfContained {
            url: url.to_string(),
            reference: format!("backing file {}", backing.display()),
        });
    }
    if let Some(file) = info.data_files.first() {
        return Err(ImageError::NotSelfContained {
            url: url.to_string(),
            reference: format!("data file {}", file.display()),
        });
    }
    Ok(detected)
}

pub(super) fn has_vhd_footer(path: &Path) -> bool {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    let mut cookie = [0u8; 8];
    f.seek(SeekFrom::End(-512)).is_ok()
        && f.read_exact(&mut cookie).is_ok()
        && &cookie == b"conectix"
}

/// qemu's name for a declared format (`vhd` is `vpc`), refusing unknown ones.
pub(super) fn qemu_format_name(format: &str, url: &Url) -> Result<String, ImageError> {
    let lower = format.to_ascii_lowercase();
    if lower == OPAQUE_FORMAT {
        return Ok(lower);
    }
    let name = match lower.as_str() {
        "vhd" => "vpc",
        other => other,
    };
    if SOURCE_FORMATS.contains(&name) {
        Ok(name.to_owned())
    } else {
        Err(ImageError::UnsupportedFormat {
            url: url.to_string(),
            format: format.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_code::ErrorCode;

    #[test]
    fn declared_formats_use_qemu_names() {
        let u = Url::parse("file:///x").unwrap();
        assert_eq!(qemu_format_name("VHD", &u).unwrap(), "vpc");
        assert_eq!(qemu_format_name("vhdx", &u).unwrap(), "vhdx");
        let err = qemu_format_name("iso", &u).unwrap_err();
        assert!(matches!(err, ImageError::UnsupportedFormat { .. }));
        assert_eq!(err.code(), ErrorCode::InvalidParameterValue);
    }
}
