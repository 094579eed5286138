//! `sts:GetCallerIdentity` on the EC2 endpoint: SDKs and tools (Packer,
//! Terraform, Ansible) ask STS who they are before they start, and with one
//! endpoint URL for everything they ask amirun. It is not an EC2 action, so
//! it is answered here, by `Action` and STS's `Version`, before the EC2
//! model parses the request; the answer is STS's XML (its namespace, its
//! shape, its error body). The caller is the account the access key maps
//! to, as its root principal.

use super::model::escape;

/// STS's API version and XML namespace.
pub const VERSION: &str = "2011-06-15";
const XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

/// Whether a request is for STS: `Action=GetCallerIdentity`, with STS's
/// version (or none: EC2 has no such action either way).
pub fn is_sts(action: &str, version: Option<&str>) -> bool {
    action == "GetCallerIdentity" && version.is_none_or(|v| v == VERSION)
}

/// `GetCallerIdentity` output (STS's `GetCallerIdentityResponse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetCallerIdentityResult {
    pub user_id: String,
    pub account: String,
    pub arn: String,
}

impl GetCallerIdentityResult {
    /// The identity of an account's root principal.
    pub fn root_of(account: &str) -> Self {
        GetCallerIdentityResult {
            user_id: account.to_string(),
            account: account.to_string(),
            arn: format!("arn:aws:iam::{account}:root"),
        }
    }

    /// STS's XML answer.
    pub fn to_xml(&self, request_id: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<GetCallerIdentityResponse xmlns=\"{XMLNS}\"><GetCallerIdentityResult><Arn>{}</Arn><UserId>{}</UserId><Account>{}</Account></GetCallerIdentityResult><ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></GetCallerIdentityResponse>",
            escape(&self.arn),
            escape(&self.user_id),
            escape(&self.account)
        )
    }
}

/// STS's error body (`ErrorResponse`, a `Sender` fault).
pub fn error_xml(code: &str, message: &str, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>Sender</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>",
        escape(code),
        escape(message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_action_and_version_and_answers_stss_shape() {
        assert!(is_sts("GetCallerIdentity", Some("2011-06-15")));
        assert!(is_sts("GetCallerIdentity", None));
        assert!(!is_sts("GetCallerIdentity", Some("2016-11-15")));
        assert!(!is_sts("DescribeImages", Some("2011-06-15")));
        let xml = GetCallerIdentityResult::root_of("123456789012").to_xml("r-1");
        assert!(xml.contains("<Account>123456789012</Account>"), "{xml}");
        assert!(
            xml.contains("<Arn>arn:aws:iam::123456789012:root</Arn>"),
            "{xml}"
        );
        assert!(xml.contains(XMLNS));
    }
}
