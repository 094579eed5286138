//! What an instance learns about itself: its id, hostname, SSH keys and user
//! data, delivered the two ways EC2 images look for them.
//!
//! The NoCloud seed ([`seed`]) is a small FAT volume labelled `cidata` that
//! cloud-init reads at first boot without any network. The IMDS responder
//! ([`imds`]) answers `http://169.254.169.254` for each guest (IMDSv1 and
//! v2) from its supervisor, reached through the per-connection `guestfwd`
//! command described in [`crate::machine::NetSpec`].

pub mod imds;
pub mod seed;

pub use seed::{build_seed, SeedSpec};

use crate::error_code::ErrorCode;

/// What went wrong making metadata media.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// A seed field cannot be written as asked.
    #[error("Invalid {field} for the seed of {instance_id}: {reason}")]
    InvalidSeed {
        /// The instance the seed is for.
        instance_id: String,
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Writing the seed image failed.
    #[error("Cannot write seed image {path}")]
    Io {
        /// The seed image (or its directory).
        path: std::path::PathBuf,
        /// The OS or filesystem error.
        #[source]
        source: std::io::Error,
    },
}

impl MetadataError {
    /// EC2-style error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            MetadataError::InvalidSeed { .. } => ErrorCode::InvalidParameterValue,
            MetadataError::Io { .. } => ErrorCode::InternalError,
        }
    }
}
