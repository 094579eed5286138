//! The instance metadata service (IMDS) a guest reaches at
//! `http://169.254.169.254`, served by the instance's supervisor.
//!
//! How a guest's request gets here: QEMU's user network has a `guestfwd`
//! for 169.254.169.254:80 whose command, run once per guest connection, is
//! `amirun __imds-relay <instances/ID/imds.sock>` ([`relay`]); it copies the
//! connection to the supervisor's Unix socket, where [`serve`] answers
//! HTTP/1.1. The supervisor never opens the database: everything it serves
//! is in [`ImdsConfig`], written by the service into the launch spec. With
//! `HttpEndpoint=disabled` the supervisor does not listen, so the relay
//! finds no socket and the guest's connection closes at once.
//!
//! Like EC2:
//! - IMDSv2: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`
//!   (1–21600) returns a token held in the supervisor's memory; requests
//!   carrying `X-aws-ec2-metadata-token` must carry a valid one (401
//!   otherwise), and with `HttpTokens=required` every request must;
//!   a token PUT with `X-Forwarded-For` is refused (403);
//! - IMDSv1: without `HttpTokens=required`, requests without a token work;
//! - `/` lists the versions, `/<version>/` lists `dynamic`, `meta-data` and
//!   (when there is some) `user-data`; directory listings name
//!   subdirectories with a trailing `/`, and a directory answers with or
//!   without the trailing slash.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The hidden CLI subcommand slirp runs per guest connection.
pub const RELAY_SUBCOMMAND: &str = "__imds-relay";

/// Longest token lifetime EC2 allows.
pub const MAX_TOKEN_TTL: u64 = 21600;

/// How long a connection may sit idle between requests.
const IDLE: Duration = Duration::from_secs(30);

/// Metadata versions `/` lists (any of them serves the same tree).
const VERSIONS: &[&str] = &[
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2011-05-01",
    "2012-01-12",
    "2014-02-25",
    "2014-11-05",
    "2015-10-20",
    "2016-04-19",
    "2016-06-30",
    "2016-09-02",
    "2018-03-28",
    "2018-08-17",
    "2018-09-24",
    "2019-10-01",
    "2020-10-27",
    "2021-01-03",
    "2021-03-23",
    "2021-07-15",
    "2022-09-24",
    "2023-01-10",
    "2023-06-05",
    "2023-09-13",
    "2024-04-11",
    "latest",
];

/// A named public key (`public-keys/0=NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub name: String,
    /// The OpenSSH public key line.
    pub openssh_key: String,
}

/// Everything the metadata service of one instance answers with; the
/// service writes it into the launch spec's `imds` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub struct ImdsConfig {
    /// The supervisor's listening socket.
    pub socket: PathBuf,
    /// `optional` or `required` (IMDSv2 only).
    pub http_tokens: String,
    /// `enabled` or `disabled`.
    pub http_endpoint: String,
    pub instance_id: String,
    pub ami_id: String,
    pub instance_type: String,
    pub account_id: String,
    pub region: String,
    pub availability_zone: String,
    pub reservation_id: String,
    pub launch_index: u32,
    pub architecture: crate::domain::Architecture,
    /// When the instance was launched (identity document's `pendingTime`).
    pub pending_time: String,
    pub hostname: String,
    pub local_ipv4: String,
    pub mac: String,
    pub public_keys: Vec<PublicKey>,
    /// Base64 of the user data, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data_base64: Option<String>,
    /// `block-device-mapping/`: name (`ami`, `root`, `ebs1`, `ephemeral0`) to device.
    pub block_devices: Vec<(String, String)>,
    /// The guest's place in its VPC; `None` for an instance without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc: Option<ImdsVpc>,
}

/// What IMDS says about the guest's VPC interface (`network/interfaces/macs/<mac>/…`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ImdsVpc {
    pub vpc_id: String,
    pub vpc_cidr: String,
    pub subnet_id: String,
    pub subnet_cidr: String,
    pub interface_id: String,
    pub local_ipv4: String,
    pub local_hostname: String,
    pub mac: String,
    pub security_group_ids: Vec<String>,
    /// Group names, in the order of `security_group_ids`.
    pub security_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_hostname: Option<String>,
}

impl ImdsConfig {
    /// Whether the guest gets a metadata service at all.
    pub fn enabled(&self) -> bool {
        self.http_endpoint != "disabled"
    }

    fn user_data(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        self.user_data_base64
            .as_ref()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
    }

    /// The instance identity document (`dynamic/instance-identity/document`).
    pub fn identity_document(&self) -> String {
        let doc = serde_json::json!({
            "accountId": self.account_id,
            "architecture": self.architecture,
            "availabilityZone": self.availability_zone,
            "billingProducts": null,
            "devpayProductCodes": null,
            "marketplaceProductCodes": null,
            "imageId": self.ami_id,
            "instanceId": self.instance_id,
            "instanceType": self.instance_type,
            "kernelId": null,
            "pendingTime": self.pending_time,
            "privateIp": self.local_ipv4,
            "ramdiskId": null,
            "region": self.region,
            "version": "2017-09-30",
        });
        serde_json::to_string_pretty(&doc).expect("serializable")
    }

    /// The `meta-data/` tree.
    fn meta_data(&self) -> Tree {
        let leaf = |s: &str| Tree::Leaf(s.as_bytes().to_vec());
        let dir = |items: Vec<(String, Tree)>| Tree::Dir(items);
        let mut keys = Vec::new();
        let mut key_index = Vec::new();
        for (n, k) in self.public_keys.iter().enumerate() {
            keys.push((
                n.to_string(),
                dir(vec![(
                    "openssh-key".into(),
                    Tree::Leaf(format!("{}\n", k.openssh_key.trim()).into_bytes()),
                )]),
            ));
            key_index.push(format!("{n}={}", k.name));
        }
        let mac = &self.mac;
        let lines = |v: &[String]| v.join("\n");
        let mut interface = vec![
            ("device-number".into(), leaf("0")),
            (
                "interface-id".into(),
                leaf(
                    self.vpc
                        .as_ref()
                        .map_or("eni-0amirun0000000000", |v| &v.interface_id),
                ),
            ),
            ("local-hostname".into(), leaf(&self.hostname)),
            ("local-ipv4s".into(), leaf(&self.local_ipv4)),
            ("mac".into(), leaf(mac)),
            ("owner-id".into(), leaf(&self.account_id)),
        ];
        let mut top = Vec::new();
        match &self.vpc {
            Some(v) => {
                if let (Some(ip), Some(host)) = (&v.public_ipv4, &v.public_hostname) {
                    interface.push(("public-hostname".into(), leaf(host)));
                    interface.push(("public-ipv4s".into(), leaf(ip)));
                    top.push(("public-hostname".to_string(), leaf(host)));
                    top.push(("public-ipv4".to_string(), leaf(ip)));
                }
                interface.extend([
                    (
                        "security-group-ids".to_string(),
                        Tree::Leaf(lines(&v.security_group_ids).into_bytes()),
                    ),
                    (
                        "security-groups".to_string(),
                        Tree::Leaf(lines(&v.security_groups).into_bytes()),
                    ),
                    ("subnet-id".into(), leaf(&v.subnet_id)),
                    ("subnet-ipv4-cidr-block".into(), leaf(&v.subnet_cidr)),
                    ("vpc-id".into(), leaf(&v.vpc_id)),
                    ("vpc-ipv4-cidr-block".into(), leaf(&v.vpc_cidr)),
                    ("vpc-ipv4-cidr-blocks".into(), leaf(&v.vpc_cidr)),
                ]);
                top.push((
                    "security-groups".to_string(),
                    Tree::Leaf(lines(&v.security_groups).into_bytes()),
                ));
            }
            None => {
                interface.extend([
                    (
                        "subnet-ipv4-cidr-block".to_string(),
                        leaf(crate::machine::GUEST_NET),
                    ),
                    (
                        "vpc-ipv4-cidr-block".into(),
                        leaf(crate::machine::GUEST_NET),
                    ),
                ]);
                top.push(("security-groups".to_string(), leaf("default")));
            }
        }
        let interface = dir(interface);
        let mut items: Vec<(String, Tree)> = vec![
            ("ami-id".into(), leaf(&self.ami_id)),
            (
                "ami-launch-index".into(),
                leaf(&self.launch_index.to_string()),
            ),
            ("ami-manifest-path".into(), leaf("(unknown)")),
            (
                "block-device-mapping".into(),
                dir(self
                    .block_devices
                    .iter()
                    .map(|(n, d)| (n.clone(), leaf(d)))
                    .collect()),
            ),
            ("hostname".into(), leaf(&self.hostname)),
            ("instance-action".into(), leaf("none")),
            ("instance-id".into(), leaf(&self.instance_id)),
            ("instance-life-cycle".into(), leaf("on-demand")),
            ("instance-type".into(), leaf(&self.instance_type)),
            ("local-hostname".into(), leaf(&self.hostname)),
            ("local-ipv4".into(), leaf(&self.local_ipv4)),
            ("mac".into(), leaf(mac)),
            (
                "network".into(),
                dir(vec![(
                    "interfaces".into(),
                    dir(vec![("macs".into(), dir(vec![(mac.clone(), interface)]))]),
                )]),
            ),
            (
                "placement".into(),
                dir(vec![
                    ("availability-zone".into(), leaf(&self.availability_zone)),
                    ("region".into(), leaf(&self.region)),
                ]),
            ),
            (
                "public-keys".into(),
                if keys.is_empty() {
                    Tree::Missing
                } else {
                    Tree::Keys(key_index, keys)
                },
            ),
            ("reservation-id".into(), leaf(&self.reservation_id)),
            (
                "services".into(),
                dir(vec![
                    ("domain".into(), leaf("amazonaws.com")),
                    ("partition".into(), leaf("aws")),
                ]),
            ),
        ];
        items.extend(top);
        items.sort_by(|a, b| a.0.cmp(&b.0));
        dir(items)
    }

    /// The whole tree below a version (`/latest/…`).
    fn version_root(&self) -> Tree {
        let mut items = vec![
            (
                "dynamic".to_string(),
                Tree::Dir(vec![(
                    "instance-identity".into(),
                    Tree::Dir(vec![(
                        "document".into(),
                        Tree::Leaf(self.identity_document().into_bytes()),
                    )]),
                )]),
            ),
            ("meta-data".to_string(), self.meta_data()),
        ];
        if let Some(u) = self.user_data() {
            items.push(("user-data".into(), Tree::Leaf(u)));
        }
        Tree::Dir(items)
    }
}

/// A node of the metadata tree.
enum Tree {
    Leaf(Vec<u8>),
    Dir(Vec<(String, Tree)>),
    /// `public-keys/`: lists `0=name`, reached as `0/`.
    Keys(Vec<String>, Vec<(String, Tree)>),
    /// Not there (e.g. no key pair): 404 and not listed.
    Missing,
}

impl Tree {
    fn listing(&self) -> Option<Vec<u8>> {
        match self {
            Tree::Dir(items) => Some(
                items
                    .iter()
                    .filter(|(_, t)| !matches!(t, Tree::Missing))
                    .map(|(n, t)| match t {
                        Tree::Leaf(_) => n.clone(),
                        _ => format!("{n}/"),
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
                    .into_bytes(),
            ),
            Tree::Keys(index, _) => Some(index.join("\n").into_bytes()),
            _ => None,
        }
    }

    fn child(&self, name: &str) -> Option<&Tree> {
        let items = match self {
            Tree::Dir(items) | Tree::Keys(_, items) => items,
            _ => return None,
        };
        items
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .filter(|t| !matches!(t, Tree::Missing))
    }
}

/// One HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    }
}

fn error_page(status: u16) -> Reply {
    let r = reason(status);
    Reply::new(
        status,
        format!(
            "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n<!DOCTYPE html>\n<html><head><title>{status} - {r}</title></head><body><h1>{status} - {r}</h1></body></html>\n"
        ),
    )
}

/// The metadata service of one instance: its data and live tokens.
pub struct Imds {
    config: ImdsConfig,
    tokens: Mutex<HashMap<String, Instant>>,
}

impl Imds {
    pub fn new(config: ImdsConfig) -> Self {
        Imds {
            config,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Answer one request. `headers` are (name, value) with any case.
    pub fn respond(&self, method: &str, target: &str, headers: &[(String, String)]) -> Reply {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        };
        let path = target.split('?').next().unwrap_or("/");
        if path == "/latest/api/token" {
            if method != "PUT" {
                return error_page(405);
            }
            if header("x-forwarded-for").is_some() {
                return error_page(403);
            }
            let ttl =
                header("x-aws-ec2-metadata-token-ttl-seconds").and_then(|t| t.parse::<u64>().ok());
            let Some(ttl) = ttl.filter(|t| (1..=MAX_TOKEN_TTL).contains(t)) else {
                return error_page(400);
            };
            let token = new_token();
            let mut tokens = self.tokens.lock().expect("token lock");
            let now = Instant::now();
            tokens.retain(|_, exp| *exp > now);
            tokens.insert(token.clone(), now + Duration::from_secs(ttl));
            let mut r = Reply::new(200, token);
            r.headers.push((
                "X-Aws-Ec2-Metadata-Token-Ttl-Seconds".into(),
                ttl.to_string(),
            ));
            return r;
        }
        if method != "GET" && method != "HEAD" {
            return error_page(405);
        }
        match header("x-aws-ec2-metadata-token") {
            Some(t) => {
                let valid = self
                    .tokens
                    .lock()
                    .expect("token lock")
                    .get(&t)
                    .is_some_and(|exp| *exp > Instant::now());
                if !valid {
                    return error_page(401);
                }
            }
            None if self.config.http_tokens == "required" => return error_page(401),
            None => {}
        }
        if path == "/" {
            return Reply::new(200, VERSIONS.join("\n"));
        }
        let mut parts = path.trim_start_matches('/').split('/');
        let version = parts.next().unwrap_or_default();
        if !VERSIONS.contains(&version) {
            return error_page(404);
        }
        let root = self.config.version_root();
        let mut node = &root;
        for p in parts.filter(|p| !p.is_empty()) {
            match node.child(p) {
                Some(n) => node = n,
                None => return error_page(404),
            }
        }
        match node {
            Tree::Leaf(b) => Reply::new(200, b.clone()),
            other => match other.listing() {
                Some(l) => Reply::new(200, l),
                None => error_page(404),
            },
        }
    }
}

fn new_token() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 42];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Listen on the config's socket (mode 0600) and answer from threads.
/// Returns once listening; does nothing when the endpoint is disabled.
pub fn serve(config: ImdsConfig) -> std::io::Result<()> {
    if !config.enabled() {
        let _ = std::fs::remove_file(&config.socket);
        return Ok(());
    }
    let _ = std::fs::remove_file(&config.socket);
    let listener = UnixListener::bind(&config.socket)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&config.socket, std::fs::Permissions::from_mode(0o600))?;
    let imds = Arc::new(Imds::new(config));
    std::thread::Builder::new()
        .name("imds".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let imds = Arc::clone(&imds);
                let _ = std::thread::Builder::new()
                    .name("imds-conn".into())
                    .spawn(move || {
                        if let Err(e) = serve_connection(&imds, stream) {
                            tracing::debug!("IMDS connection ended: {e}");
                        }
                    });
            }
        })?;
    Ok(())
}

/// Answer HTTP/1.1 requests on one connection until it closes.
pub fn serve_connection(imds: &Imds, stream: UnixStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let (method, target, version) = (
            words.next().unwrap_or_default().to_string(),
            words.next().unwrap_or("/").to_string(),
            words.next().unwrap_or("HTTP/1.0").to_string(),
        );
        let mut headers = Vec::new();
        let mut total = 0usize;
        loop {
            let mut h = String::new();
            let n = reader.read_line(&mut h)?;
            total += n;
            if n == 0 || total > 64 * 1024 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        // Discard a body, if any (token PUTs have none, but be lenient).
        let length: u64 = get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        if length > 64 * 1024 {
            return Ok(());
        }
        std::io::copy(&mut (&mut reader).take(length), &mut std::io::sink())?;
        let close = version == "HTTP/1.0"
            || get("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let reply = if version.starts_with("HTTP/1.") {
            imds.respond(&method, &target, &headers)
        } else {
            error_page(400)
        };
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nServer: EC2ws\r\nConnection: {}\r\n",
            reply.status,
            reason(reply.status),
            reply.body.len(),
            if close { "close" } else { "keep-alive" }
        );
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        writer.write_all(head.as_bytes())?;
        if method != "HEAD" {
            writer.write_all(&reply.body)?;
        }
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// `amirun __imds-relay SOCKET`: copy stdin to the supervisor's IMDS socket
/// and its answers to stdout, until either side closes. slirp runs this
/// per guest connection with the connection as stdin and stdout. Without
/// the socket (endpoint disabled, supervisor gone), it exits at once and
/// the guest's connection closes.
pub fn relay(socket: &Path) -> std::io::Result<()> {
    let stream = UnixStream::connect(socket)?;
    let mut to_guest = stream.try_clone()?;
    let mut to_supervisor = stream;
    let upstream = std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let _ = std::io::copy(&mut stdin, &mut to_supervisor);
        let _ = to_supervisor.shutdown(std::net::Shutdown::Write);
    });
    let mut stdout = std::io::stdout().lock();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = to_guest.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stdout.write_all(&buf[..n])?;
        stdout.flush()?;
    }
    drop(upstream);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tokens: &str) -> ImdsConfig {
        ImdsConfig {
            socket: PathBuf::from("/nonexistent"),
            http_tokens: tokens.into(),
            http_endpoint: "enabled".into(),
            instance_id: "i-0123456789abcdef0".into(),
            ami_id: "ami-0123456789abcdef0".into(),
            instance_type: "t3.micro".into(),
            account_id: "000000000000".into(),
            region: "us-east-1".into(),
            availability_zone: "us-east-1a".into(),
            reservation_id: "r-0123456789abcdef0".into(),
            launch_index: 0,
            architecture: crate::domain::Architecture::X86_64,
            pending_time: "2024-01-01T00:00:00Z".into(),
            hostname: "ip-169-254-0-15.ec2.internal".into(),
            local_ipv4: "169.254.0.15".into(),
            mac: "52:54:00:12:34:56".into(),
            public_keys: vec![PublicKey {
                name: "k".into(),
                openssh_key: "ssh-ed25519 AAAA k".into(),
            }],
            user_data_base64: Some("IyEvYmluL3NoCg==".into()),
            block_devices: vec![
                ("ami".into(), "/dev/xvda".into()),
                ("root".into(), "/dev/xvda".into()),
            ],
            vpc: None,
        }
    }

    fn get(imds: &Imds, path: &str, token: Option<&str>) -> (u16, String) {
        let h: Vec<(String, String)> = token
            .map(|t| vec![("X-aws-ec2-metadata-token".to_string(), t.to_string())])
            .unwrap_or_default();
        let r = imds.respond("GET", path, &h);
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    }

    #[test]
    fn tree_and_listings_follow_ec2() {
        let imds = Imds::new(config("optional"));
        assert!(get(&imds, "/", None).1.ends_with("\nlatest"));
        assert_eq!(
            get(&imds, "/latest/", None).1,
            "dynamic/\nmeta-data/\nuser-data"
        );
        assert_eq!(
            get(&imds, "/latest/meta-data/instance-id", None).1,
            "i-0123456789abcdef0"
        );
        let listing = get(&imds, "/latest/meta-data/", None).1;
        assert!(listing.contains("placement/\n"), "{listing}");
        assert!(listing.contains("public-keys/\n"), "{listing}");
        assert!(listing.contains("instance-type\n"), "{listing}");
        assert_eq!(
            get(&imds, "/latest/meta-data/placement", None).1,
            "availability-zone\nregion"
        );
        assert_eq!(
            get(&imds, "/2021-03-23/meta-data/placement/region", None).1,
            "us-east-1"
        );
        assert_eq!(get(&imds, "/latest/meta-data/public-keys/", None).1, "0=k");
        assert_eq!(
            get(&imds, "/latest/meta-data/public-keys/0/", None).1,
            "openssh-key"
        );
        assert_eq!(
            get(&imds, "/latest/meta-data/public-keys/0/openssh-key", None).1,
            "ssh-ed25519 AAAA k\n"
        );
        assert_eq!(
            get(&imds, "/latest/meta-data/block-device-mapping/", None).1,
            "ami\nroot"
        );
        assert_eq!(get(&imds, "/latest/user-data", None).1, "#!/bin/sh\n");
        let doc: serde_json::Value =
            serde_json::from_str(&get(&imds, "/latest/dynamic/instance-identity/document", None).1)
                .unwrap();
        assert_eq!(doc["instanceId"], "i-0123456789abcdef0");
        assert_eq!(doc["region"], "us-east-1");
        assert_eq!(get(&imds, "/latest/meta-data/nope", None).0, 404);
        assert_eq!(get(&imds, "/1999-01-01/meta-data/", None).0, 404);
    }

    #[test]
    fn tokens_follow_imdsv2() {
        let imds = Imds::new(config("required"));
        assert_eq!(get(&imds, "/latest/meta-data/instance-id", None).0, 401);
        let put = |h: Vec<(String, String)>| imds.respond("PUT", "/latest/api/token", &h);
        assert_eq!(put(vec![]).status, 400);
        assert_eq!(
            put(vec![(
                "X-aws-ec2-metadata-token-ttl-seconds".into(),
                "0".into()
            )])
            .status,
            400
        );
        assert_eq!(
            put(vec![(
                "X-aws-ec2-metadata-token-ttl-seconds".into(),
                "21601".into()
            )])
            .status,
            400
        );
        assert_eq!(
            put(vec![
                ("X-aws-ec2-metadata-token-ttl-seconds".into(), "60".into()),
                ("X-Forwarded-For".into(), "1.2.3.4".into())
            ])
            .status,
            403
        );
        let r = put(vec![(
            "x-aws-ec2-metadata-token-ttl-seconds".into(),
            "1".into(),
        )]);
        assert_eq!(r.status, 200);
        let token = String::from_utf8(r.body).unwrap();
        assert_eq!(
            get(&imds, "/latest/meta-data/instance-id", Some(&token)).0,
            200
        );
        assert_eq!(
            get(&imds, "/latest/meta-data/instance-id", Some("bogus")).0,
            401
        );
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(
            get(&imds, "/latest/meta-data/instance-id", Some(&token)).0,
            401
        );
        assert_eq!(imds.respond("GET", "/latest/api/token", &[]).status, 405);
    }

    #[test]
    fn v1_works_when_tokens_are_optional() {
        let imds = Imds::new(config("optional"));
        assert_eq!(get(&imds, "/latest/meta-data/instance-id", None).0, 200);
        assert_eq!(
            get(&imds, "/latest/meta-data/instance-id", Some("expired")).0,
            401
        );
    }

    #[test]
    fn serves_http_over_the_socket_with_keep_alive() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config("optional");
        c.socket = dir.path().join("imds.sock");
        serve(c.clone()).unwrap();
        let mut s = UnixStream::connect(&c.socket).unwrap();
        s.write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\nGET /latest/meta-data/ami-id HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(
            out.contains("\r\n\r\ni-0123456789abcdef0HTTP/1.1 200 OK"),
            "{out}"
        );
        assert!(out.ends_with("ami-0123456789abcdef0"), "{out}");
        let mut disabled = c.clone();
        disabled.http_endpoint = "disabled".into();
        serve(disabled).unwrap();
        assert!(UnixStream::connect(&c.socket).is_err());
    }
}
