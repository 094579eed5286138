//! The service's error: an EC2 error code, a one-line message naming the
//! object, and the cause chain. Both front ends render it (the CLI as text,
//! the HTTP API as EC2's XML error body).

use std::error::Error as StdError;
use std::fmt;

/// An error with EC2's error code.
#[derive(Debug)]
pub struct Error {
    code: String,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

/// Result of a service operation.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error with `code` (e.g. `InvalidAMIID.NotFound`) and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Error {
            code: code.into(),
            message: message.into(),
            source: None,
        }
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// EC2 error code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// One-line message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// HTTP status EC2 would answer with.
    pub fn http_status(&self) -> u16 {
        match self.code.as_str() {
            "InternalError" | "MissingDependency" => 500,
            "AuthFailure" | "UnauthorizedOperation" => 403,
            "InvalidAction" => 400,
            _ => 400,
        }
    }

    /// `InvalidParameterValue`.
    pub fn invalid_value(message: impl Into<String>) -> Self {
        Error::new("InvalidParameterValue", message)
    }

    /// `MissingParameter` for a required parameter.
    pub fn missing(parameter: &str) -> Self {
        Error::new(
            "MissingParameter",
            format!("The request must contain the parameter {parameter}"),
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Errors of the modules below keep their own code and message and become the cause.
macro_rules! from_module_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                let (code, message) = (e.code().to_string(), e.to_string());
                // The message is already this error's text; keep only deeper causes.
                match StdError::source(&e) {
                    Some(_) => Error { code, message, source: Some(Box::new(SourceOnly(Box::new(e)))) },
                    None => Error::new(code, message),
                }
            }
        }
    )*};
}

/// Wraps a module error so that the chain printed below the message starts
/// at its cause (the message itself is not repeated).
#[derive(Debug)]
struct SourceOnly(Box<dyn StdError + Send + Sync>);

impl fmt::Display for SourceOnly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.source() {
            Some(s) => write!(f, "{s}"),
            None => write!(f, "{}", self.0),
        }
    }
}

impl StdError for SourceOnly {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source().and_then(|s| s.source())
    }
}

from_module_error!(
    crate::store::StoreError,
    crate::catalog::CatalogError,
    crate::images::ImageError,
    crate::disk::DiskError
);

from_module_error!(crate::machine::MachineError, crate::metadata::MetadataError);

impl From<crate::failpoint::Injected> for Error {
    fn from(e: crate::failpoint::Injected) -> Self {
        Error::new("InternalError", e.to_string())
    }
}

impl From<crate::instance::supervisor::SupervisorError> for Error {
    fn from(e: crate::instance::supervisor::SupervisorError) -> Self {
        Error::new("InternalError", e.to_string()).with_source(e)
    }
}

impl From<crate::instance::supervisor::ClientError> for Error {
    fn from(e: crate::instance::supervisor::ClientError) -> Self {
        Error::new("InternalError", "The instance's supervisor did not answer").with_source(e)
    }
}
