//! The service's error: an EC2 error code, a one-line message naming the
//! object, and the cause chain. Both front ends render it (the CLI as text
//! via [`Error::chain`], the HTTP API as EC2's XML error body with the
//! status of [`ErrorCode::http_status`]).

use std::error::Error as StdError;
use std::fmt;

pub use crate::error_code::ErrorCode;

/// An error with EC2's error code.
#[derive(Debug)]
pub struct Error {
    code: ErrorCode,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

/// Result of a service operation.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error with `code` (e.g. [`ErrorCode::InvalidAmiIdNotFound`]) and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
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
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// One-line message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// HTTP status EC2 would answer with.
    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }

    /// `InternalError`: something on this host failed, not the request.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::InternalError, message)
    }

    /// `InvalidParameterValue`.
    pub fn invalid_value(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::InvalidParameterValue, message)
    }

    /// `IncorrectInstanceState`: the instance is not in a state the operation needs.
    pub fn incorrect_instance_state(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::IncorrectInstanceState, message)
    }

    /// `MissingParameter` for a required parameter.
    pub fn missing(parameter: &str) -> Self {
        Error::new(
            ErrorCode::MissingParameter,
            format!("The request must contain the parameter {parameter}"),
        )
    }

    /// The error as people read it: `CODE: message`, then each cause on its
    /// own line (`  caused by: …`). The CLI prints it on failure; the HTTP
    /// API logs it for server errors.
    pub fn chain(&self) -> Chain<'_> {
        Chain(self)
    }
}

/// [`Error::chain`]'s rendering.
pub struct Chain<'a>(&'a Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0.code, self.0.message)?;
        let mut source = StdError::source(self.0);
        while let Some(s) = source {
            write!(f, "\n  caused by: {s}")?;
            source = s.source();
        }
        Ok(())
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
                let (code, message) = (e.code(), e.to_string());
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
    crate::blobs::ImageError,
    crate::disk::DiskError
);

from_module_error!(crate::machine::MachineError, crate::metadata::MetadataError);

impl From<crate::failpoint::Injected> for Error {
    fn from(e: crate::failpoint::Injected) -> Self {
        Error::internal(e.to_string())
    }
}

impl From<crate::instance::supervisor::SupervisorError> for Error {
    fn from(e: crate::instance::supervisor::SupervisorError) -> Self {
        Error::internal(e.to_string()).with_source(e)
    }
}

impl From<crate::instance::supervisor::ClientError> for Error {
    fn from(e: crate::instance::supervisor::ClientError) -> Self {
        Error::internal("The instance's supervisor did not answer").with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("disk full")]
    struct Leaf;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot write /x/y")]
    struct Middle(#[source] Leaf);

    #[test]
    fn chain_prints_code_message_and_each_cause() {
        let e = Error::internal("Cannot save the AMI").with_source(Middle(Leaf));
        assert_eq!(
            e.chain().to_string(),
            "InternalError: Cannot save the AMI\n  caused by: cannot write /x/y\n  caused by: disk full"
        );
        let e = Error::new(
            ErrorCode::InvalidAmiIdNotFound,
            "The image id '[ami-1]' does not exist",
        );
        assert_eq!(
            e.chain().to_string(),
            "InvalidAMIID.NotFound: The image id '[ami-1]' does not exist"
        );
        assert_eq!(e.to_string(), e.chain().to_string());
    }

    #[test]
    fn named_constructors_carry_their_codes() {
        assert_eq!(Error::internal("x").code(), ErrorCode::InternalError);
        assert_eq!(Error::internal("x").http_status(), 500);
        assert_eq!(
            Error::invalid_value("x").code(),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            Error::incorrect_instance_state("x").code(),
            ErrorCode::IncorrectInstanceState
        );
        let e = Error::missing("ImageId");
        assert_eq!(e.code(), ErrorCode::MissingParameter);
        assert_eq!(
            e.message(),
            "The request must contain the parameter ImageId"
        );
    }
}
