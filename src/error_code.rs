//! Every error code amirun answers with, spelled as EC2 spells it, and the
//! HTTP status each one carries: one table, so the CLI, the HTTP API and
//! every module below the service agree on both.
//!
//! This module depends on nothing else in the crate, so the modules below
//! the service (store, disk, machine, …) can name their codes without
//! importing the service. EC2's own codes come first; amirun's own (for
//! things EC2 does not have: baking, boot tests, host dependencies, the
//! CLI's waiters) follow. EC2 documents client errors as 4xx and server
//! errors as 5xx; the exact statuses below are what EC2 answers.

use std::fmt;
use std::str::FromStr;

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $text:literal, $status:literal;)*) => {
        /// An error code: EC2's spelling via [`ErrorCode::as_str`] and `Display`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as it appears on the wire (`InvalidAMIID.NotFound`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                }
            }

            /// The HTTP status the API answers this code with (the one map).
            pub fn http_status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                }
            }
        }

        impl FromStr for ErrorCode {
            type Err = UnknownErrorCode;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(ErrorCode::$variant),)*
                    _ => Err(UnknownErrorCode(s.to_string())),
                }
            }
        }
    };
}

error_codes! {
    // EC2's common client errors.
    /// Credentials or ownership refused. 403 when the service refuses an
    /// object (another account's AMI); the HTTP layer answers 401 when the
    /// request's own credentials cannot be validated.
    AuthFailure = "AuthFailure", 403;
    /// The caller may not do this.
    UnauthorizedOperation = "UnauthorizedOperation", 403;
    /// `DryRun` was set and the request would have succeeded.
    DryRunOperation = "DryRunOperation", 412;
    IncompleteSignature = "IncompleteSignature", 400;
    /// A `ClientToken` came back with different parameters.
    IdempotentParameterMismatch = "IdempotentParameterMismatch", 400;
    InvalidAction = "InvalidAction", 400;
    InvalidParameter = "InvalidParameter", 400;
    InvalidParameterCombination = "InvalidParameterCombination", 400;
    InvalidParameterValue = "InvalidParameterValue", 400;
    MissingAction = "MissingAction", 400;
    MissingParameter = "MissingParameter", 400;
    RequestExpired = "RequestExpired", 400;
    UnknownParameter = "UnknownParameter", 400;
    UnsupportedOperation = "UnsupportedOperation", 400;
    /// The request body did not arrive in time.
    RequestTimeout = "RequestTimeout", 408;
    /// The request body is too large.
    RequestEntityTooLarge = "RequestEntityTooLarge", 413;
    // EC2's client errors for specific actions.
    IncorrectInstanceState = "IncorrectInstanceState", 400;
    /// HibernationOptions or a hibernating stop the instance does not qualify for.
    UnsupportedHibernationConfiguration = "UnsupportedHibernationConfiguration", 400;
    IncorrectState = "IncorrectState", 400;
    /// EC2 lists it among server errors; amirun answers 400 (no free host
    /// port is the caller's to fix, and clients would retry a 5xx).
    InsufficientInstanceCapacity = "InsufficientInstanceCapacity", 400;
    InstanceLimitExceeded = "InstanceLimitExceeded", 400;
    InvalidAmiIdMalformed = "InvalidAMIID.Malformed", 400;
    InvalidAmiIdNotFound = "InvalidAMIID.NotFound", 400;
    InvalidAmiIdUnavailable = "InvalidAMIID.Unavailable", 400;
    InvalidAmiNameDuplicate = "InvalidAMIName.Duplicate", 400;
    InvalidAmiNameMalformed = "InvalidAMIName.Malformed", 400;
    InvalidBlockDeviceMapping = "InvalidBlockDeviceMapping", 400;
    InvalidId = "InvalidID", 400;
    InvalidInstanceAttributeValue = "InvalidInstanceAttributeValue", 400;
    InvalidInstanceIdMalformed = "InvalidInstanceID.Malformed", 400;
    InvalidInstanceIdNotFound = "InvalidInstanceID.NotFound", 400;
    InvalidInstanceType = "InvalidInstanceType", 400;
    InvalidKeyFormat = "InvalidKey.Format", 400;
    InvalidKeyPairDuplicate = "InvalidKeyPair.Duplicate", 400;
    InvalidKeyPairMalformed = "InvalidKeyPair.Malformed", 400;
    InvalidKeyPairNotFound = "InvalidKeyPair.NotFound", 400;
    InvalidNextToken = "InvalidNextToken", 400;
    /// The object's own settings forbid the operation (`disableApiTermination`).
    OperationNotPermitted = "OperationNotPermitted", 400;
    InvalidSnapshotIdMalformed = "InvalidSnapshotID.Malformed", 400;
    InvalidSnapshotInUse = "InvalidSnapshot.InUse", 400;
    InvalidSnapshotNotFound = "InvalidSnapshot.NotFound", 400;
    InvalidVolumeNotFound = "InvalidVolume.NotFound", 400;
    InvalidVolumeIdMalformed = "InvalidVolumeID.Malformed", 400;
    InvalidVolumeZoneMismatch = "InvalidVolume.ZoneMismatch", 400;
    VolumeInUse = "VolumeInUse", 400;
    IncorrectModificationState = "IncorrectModificationState", 400;
    InvalidAttachmentNotFound = "InvalidAttachment.NotFound", 400;
    InvalidLaunchTemplateIdMalformed = "InvalidLaunchTemplateId.Malformed", 400;
    InvalidLaunchTemplateIdNotFound = "InvalidLaunchTemplateId.NotFound", 400;
    InvalidLaunchTemplateIdVersionNotFound = "InvalidLaunchTemplateId.VersionNotFound", 400;
    InvalidLaunchTemplateNameAlreadyExists = "InvalidLaunchTemplateName.AlreadyExistsException", 400;
    InvalidLaunchTemplateNameMalformed = "InvalidLaunchTemplateName.MalformedException", 400;
    InvalidLaunchTemplateNameNotFound = "InvalidLaunchTemplateName.NotFoundException", 400;
    TagLimitExceeded = "TagLimitExceeded", 400;
    // EC2's client errors of the VPC model.
    CannotDelete = "CannotDelete", 400;
    DependencyViolation = "DependencyViolation", 400;
    InsufficientFreeAddressesInSubnet = "InsufficientFreeAddressesInSubnet", 400;
    InvalidGroupDuplicate = "InvalidGroup.Duplicate", 400;
    InvalidGroupIdMalformed = "InvalidGroupId.Malformed", 400;
    InvalidGroupNotFound = "InvalidGroup.NotFound", 400;
    InvalidInternetGatewayIdNotFound = "InvalidInternetGatewayID.NotFound", 400;
    InvalidIpAddressInUse = "InvalidIPAddress.InUse", 400;
    InvalidNetworkInterfaceIdMalformed = "InvalidNetworkInterfaceID.Malformed", 400;
    InvalidNetworkInterfaceIdNotFound = "InvalidNetworkInterfaceID.NotFound", 400;
    InvalidPermissionDuplicate = "InvalidPermission.Duplicate", 400;
    InvalidPermissionMalformed = "InvalidPermission.Malformed", 400;
    InvalidPermissionNotFound = "InvalidPermission.NotFound", 400;
    InvalidRouteTableIdNotFound = "InvalidRouteTableID.NotFound", 400;
    InvalidSecurityGroupRuleIdNotFound = "InvalidSecurityGroupRuleId.NotFound", 400;
    InvalidSubnetConflict = "InvalidSubnet.Conflict", 400;
    InvalidSubnetIdMalformed = "InvalidSubnetID.Malformed", 400;
    InvalidSubnetIdNotFound = "InvalidSubnetID.NotFound", 400;
    InvalidSubnetRange = "InvalidSubnet.Range", 400;
    InvalidVpcIdMalformed = "InvalidVpcID.Malformed", 400;
    InvalidVpcIdNotFound = "InvalidVpcID.NotFound", 400;
    InvalidVpcRange = "InvalidVpc.Range", 400;
    VpcIdNotSpecified = "VPCIdNotSpecified", 400;
    // EC2's server errors.
    InternalError = "InternalError", 500;
    // amirun's own codes.
    /// A host tool amirun needs (QEMU, qemu-img, firmware) is missing.
    MissingDependency = "MissingDependency", 500;
    /// A catalog file is malformed.
    InvalidManifest = "InvalidManifest", 400;
    /// A bake recipe is malformed.
    InvalidRecipe = "InvalidRecipe", 400;
    /// A bake failed (the cause says at which step).
    BakeFailed = "BakeFailed", 400;
    /// A boot test did not reach its checks.
    BootTestFailed = "BootTestFailed", 400;
    /// A recipe's provisioning step failed in the guest.
    ProvisioningFailed = "ProvisioningFailed", 400;
    /// A bake or boot test ran out of time.
    Timeout = "Timeout", 400;
    /// The runtime directory is not private to this user.
    UnsafeRuntimeDirectory = "UnsafeRuntimeDirectory", 400;
    /// The CLI's `wait` gave up (as the aws CLI's waiters say).
    WaiterTimedOut = "WaiterTimedOut", 400;
    /// The CLI's `wait` reached a state it cannot leave.
    WaiterFailed = "WaiterFailed", 400;
}

/// A string that is not one of amirun's error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an error code amirun knows")]
pub struct UnknownErrorCode(pub String);

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_spelling() {
        for &code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code), "{code:?}");
            assert_eq!(code.to_string(), code.as_str());
        }
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} spelled twice");
        }
        assert!("NoSuchCode".parse::<ErrorCode>().is_err());
        assert!("invalidparametervalue".parse::<ErrorCode>().is_err());
    }

    #[test]
    fn dotted_codes_keep_ec2_spelling() {
        assert_eq!(
            ErrorCode::InvalidAmiIdNotFound.as_str(),
            "InvalidAMIID.NotFound"
        );
        assert_eq!(
            ErrorCode::InvalidAmiIdMalformed.as_str(),
            "InvalidAMIID.Malformed"
        );
        assert_eq!(
            ErrorCode::InvalidInstanceIdNotFound.as_str(),
            "InvalidInstanceID.NotFound"
        );
        assert_eq!(
            ErrorCode::InvalidSnapshotInUse.as_str(),
            "InvalidSnapshot.InUse"
        );
        assert_eq!(
            ErrorCode::InvalidSnapshotIdMalformed.as_str(),
            "InvalidSnapshotID.Malformed"
        );
        assert_eq!(ErrorCode::InvalidKeyFormat.as_str(), "InvalidKey.Format");
        assert_eq!(ErrorCode::InvalidId.as_str(), "InvalidID");
    }

    #[test]
    fn http_statuses_follow_ec2() {
        use ErrorCode::*;
        for (code, status) in [
            (InternalError, 500),
            (MissingDependency, 500),
            (AuthFailure, 403),
            (UnauthorizedOperation, 403),
            (DryRunOperation, 412),
            (RequestTimeout, 408),
            (RequestEntityTooLarge, 413),
            (InvalidAction, 400),
            (RequestExpired, 400),
            (IncompleteSignature, 400),
            (InvalidAmiIdNotFound, 400),
            (IncorrectInstanceState, 400),
        ] {
            assert_eq!(code.http_status(), status, "{code}");
        }
        // Every code is a client (4xx) or server (5xx) error, as EC2 documents.
        for code in ErrorCode::ALL {
            assert!((400..600).contains(&code.http_status()), "{code}");
        }
        // Only internal failures are server errors.
        let server: Vec<_> = ErrorCode::ALL
            .iter()
            .filter(|c| c.http_status() >= 500)
            .collect();
        assert_eq!(server, [&InternalError, &MissingDependency]);
    }
}
