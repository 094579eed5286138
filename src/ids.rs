//! EC2-style resource ids (`ami-` + 17 hex digits) and their validation.
//!
//! Ids are random for resources users create and derived from a stable key
//! for catalog AMIs, so the same catalog entry has the same id in a region on
//! every machine.

use sha2::{Digest, Sha256};

/// Kinds of resource id amirun hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Image,
    Snapshot,
    Volume,
    Instance,
    Reservation,
    KeyPair,
    ImportTask,
    Vpc,
    Subnet,
    SecurityGroup,
    SecurityGroupRule,
    NetworkInterface,
    NetworkInterfaceAttachment,
    InternetGateway,
    RouteTable,
    RouteTableAssociation,
    LaunchTemplate,
}

impl IdKind {
    /// The id prefix EC2 uses for this kind.
    pub fn prefix(self) -> &'static str {
        match self {
            IdKind::Image => "ami",
            IdKind::Snapshot => "snap",
            IdKind::Volume => "vol",
            IdKind::Instance => "i",
            IdKind::Reservation => "r",
            IdKind::KeyPair => "key",
            IdKind::ImportTask => "import-ami",
            IdKind::Vpc => "vpc",
            IdKind::Subnet => "subnet",
            IdKind::SecurityGroup => "sg",
            IdKind::SecurityGroupRule => "sgr",
            IdKind::NetworkInterface => "eni",
            IdKind::NetworkInterfaceAttachment => "eni-attach",
            IdKind::InternetGateway => "igw",
            IdKind::RouteTable => "rtb",
            IdKind::RouteTableAssociation => "rtbassoc",
            IdKind::LaunchTemplate => "lt",
        }
    }
}

/// A fresh random id of the given kind.
pub fn new_id(kind: IdKind) -> String {
    let bytes: [u8; 9] = rand::random();
    let hex = hex::encode(bytes);
    format!("{}-{}", kind.prefix(), &hex[..17])
}

/// A stable id derived from `key` (catalog entries).
///
/// ```
/// let a = amirun::ids::derived_id(amirun::ids::IdKind::Image, "debian-12/us-east-1");
/// assert_eq!(a, amirun::ids::derived_id(amirun::ids::IdKind::Image, "debian-12/us-east-1"));
/// assert!(amirun::ids::is_well_formed(amirun::ids::IdKind::Image, &a));
/// ```
pub fn derived_id(kind: IdKind, key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex = hex::encode(digest);
    format!("{}-{}", kind.prefix(), &hex[..17])
}

/// Whether `id` has the shape of an id of `kind` (prefix, then 8 or 17 hex digits).
pub fn is_well_formed(kind: IdKind, id: &str) -> bool {
    let Some(rest) = id
        .strip_prefix(kind.prefix())
        .and_then(|r| r.strip_prefix('-'))
    else {
        return false;
    };
    (rest.len() == 8 || rest.len() == 17) && rest.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_well_formed_and_distinct() {
        let a = new_id(IdKind::Image);
        let b = new_id(IdKind::Image);
        assert!(is_well_formed(IdKind::Image, &a), "{a}");
        assert_ne!(a, b);
        assert_eq!(a.len(), "ami-".len() + 17);
    }

    #[test]
    fn malformed_ids_are_refused() {
        assert!(!is_well_formed(IdKind::Image, "ami-xyz"));
        assert!(!is_well_formed(IdKind::Image, "snap-0123456789abcdef0"));
        assert!(is_well_formed(IdKind::Image, "ami-12345678"));
        assert!(is_well_formed(IdKind::Snapshot, "snap-0123456789abcdef0"));
    }
}
