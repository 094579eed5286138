//! A small blocking client for the OpenStack APIs amirun's OpenStack backend
//! needs: Keystone v3 password auth with the service catalog, Glance v2
//! images (create, upload, members, delete) and Nova servers and flavors.
//!
//! It speaks the REST APIs with the `reqwest` blocking client the crate
//! already uses, rather than an SDK crate: the maintained Rust SDKs are
//! async-first (`openstack` 0.6 on tokio; `openstack_sdk` generates one
//! crate per service with hundreds of endpoints), while amirun's service
//! layer is synchronous and needs a dozen calls. Only the members amirun
//! reads are modelled; everything else in a response is ignored.
//!
//! - [`auth`]: where a cloud is ([`CloudConfig`], read from `clouds.yaml`)
//!   and a [`Session`] holding a project-scoped token and the catalog; it
//!   re-authenticates before the token expires.
//! - [`image`]: Glance v2.
//! - [`compute`]: Nova v2.1 at a fixed microversion ([`COMPUTE_MICROVERSION`]).
//!
//! Nothing here knows EC2: the backend above maps ids, states and errors.

pub mod auth;
pub mod compute;
pub mod image;

pub use auth::{CloudConfig, Session};
pub use compute::COMPUTE_MICROVERSION;

/// What can go wrong talking to an OpenStack cloud.
#[derive(Debug, thiserror::Error)]
pub enum OpenStackError {
    /// `clouds.yaml` could not be read or does not name the cloud.
    #[error("Cannot use cloud {cloud:?} from {path}: {reason}")]
    Config {
        cloud: String,
        path: String,
        reason: String,
    },
    /// No answer (connection refused, timeout, TLS).
    #[error("Cannot reach {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The cloud answered with an error status.
    #[error("{method} {url} failed with HTTP {status}: {message}")]
    Status {
        method: String,
        url: String,
        status: u16,
        message: String,
    },
    /// The answer was not what the API documents.
    #[error("Unexpected answer from {url}: {reason}")]
    Protocol { url: String, reason: String },
    /// The catalog has no endpoint of this service type for the region and interface.
    #[error("No {service_type} endpoint (interface {interface}, region {region}) in the catalog; is the service registered in Keystone?")]
    NoEndpoint {
        service_type: String,
        interface: String,
        region: String,
    },
    /// A local file (an image to upload) could not be read.
    #[error("Cannot read {path}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A wait for a state ran out of time.
    #[error("{what} did not reach {wanted} within {seconds}s (last: {last})")]
    Timeout {
        what: String,
        wanted: String,
        last: String,
        seconds: u64,
    },
}

impl OpenStackError {
    /// The HTTP status, when the cloud answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            OpenStackError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when the cloud said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

/// Result of an OpenStack call.
pub type Result<T> = std::result::Result<T, OpenStackError>;
