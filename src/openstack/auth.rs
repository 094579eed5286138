//! Keystone v3: where a cloud is and who we are there ([`CloudConfig`],
//! from `clouds.yaml` as the `openstack` CLI reads it), and a [`Session`]
//! that holds a project-scoped token with its service catalog and sends
//! every request with it.
//!
//! The token is renewed (password auth again) when less than
//! [`RENEW_BEFORE`] of its life is left, so a long-running `amirun serve`
//! never sends an expired one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{OpenStackError, Result};

/// A token is renewed when it has less than this left.
pub const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// One cloud of a `clouds.yaml`: password auth scoped to a project.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct CloudConfig {
    /// Keystone, with or without the trailing `/v3`.
    pub auth_url: String,
    pub username: String,
    pub password: String,
    pub project_name: String,
    pub user_domain_name: String,
    pub project_domain_name: String,
    /// The region whose endpoints are used.
    pub region_name: String,
    /// Which endpoint of each service: `public` (default), `internal`, `admin`.
    pub interface: String,
}

/// The members of a `clouds.yaml` entry amirun reads.
#[derive(Deserialize)]
struct CloudsFile {
    clouds: BTreeMap<String, CloudEntry>,
}

#[derive(Deserialize)]
struct CloudEntry {
    auth: AuthEntry,
    region_name: Option<String>,
    interface: Option<String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth_url: String,
    username: String,
    password: String,
    project_name: String,
    user_domain_name: Option<String>,
    project_domain_name: Option<String>,
}

impl CloudConfig {
    /// The places the `openstack` CLI looks for `clouds.yaml`, in its order:
    /// `$OS_CLIENT_CONFIG_FILE`, `./clouds.yaml`,
    /// `~/.config/openstack/clouds.yaml`, `/etc/openstack/clouds.yaml`.
    pub fn search_path() -> Vec<PathBuf> {
        let mut paths = Vec::new();
        if let Some(p) = std::env::var_os("OS_CLIENT_CONFIG_FILE") {
            paths.push(PathBuf::from(p));
        }
        paths.push(PathBuf::from("clouds.yaml"));
        if let Some(home) = std::env::var_os("HOME") {
            paths.push(Path::new(&home).join(".config/openstack/clouds.yaml"));
        }
        paths.push(PathBuf::from("/etc/openstack/clouds.yaml"));
        paths
    }

    /// The cloud named `cloud` from the first `clouds.yaml` on [`Self::search_path`].
    pub fn from_clouds_yaml(cloud: &str) -> Result<CloudConfig> {
        let paths = Self::search_path();
        match paths.iter().find(|p| p.is_file()) {
            Some(path) => Self::from_file(path, cloud),
            None => Err(OpenStackError::Config {
                cloud: cloud.to_string(),
                path: paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                reason: "no clouds.yaml there (scripts/openstack-aio.sh writes one)".into(),
            }),
        }
    }

    /// The cloud named `cloud` from the `clouds.yaml` at `path`.
    pub fn from_file(path: &Path, cloud: &str) -> Result<CloudConfig> {
        let err = |reason: String| OpenStackError::Config {
            cloud: cloud.to_string(),
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::parse(&text, cloud).map_err(err)
    }

    /// The cloud named `cloud` from the text of a `clouds.yaml`.
    pub fn parse(text: &str, cloud: &str) -> std::result::Result<CloudConfig, String> {
        let mut file: CloudsFile = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
        let names = file.clouds.keys().cloned().collect::<Vec<_>>().join(", ");
        let entry = file
            .clouds
            .remove(cloud)
            .ok_or_else(|| format!("no such cloud (clouds there: {names})"))?;
        let a = entry.auth;
        Ok(CloudConfig {
            auth_url: a.auth_url,
            username: a.username,
            password: a.password,
            project_name: a.project_name,
            user_domain_name: a.user_domain_name.unwrap_or_else(|| "Default".into()),
            project_domain_name: a.project_domain_name.unwrap_or_else(|| "Default".into()),
            region_name: entry.region_name.unwrap_or_else(|| "RegionOne".into()),
            interface: entry.interface.unwrap_or_else(|| "public".into()),
        })
    }

    /// Keystone's v3 root, whether or not `auth_url` names the version.
    fn identity_v3(&self) -> String {
        let base = self.auth_url.trim_end_matches('/');
        if base.ends_with("/v3") {
            base.to_string()
        } else {
            format!("{base}/v3")
        }
    }
}

/// A scoped token, the ids it stands for, and its catalog.
#[derive(Clone, Debug)]
pub struct Token {
    pub value: String,
    pub expires_at: DateTime<Utc>,
    pub project_id: String,
    pub user_id: String,
    catalog: Vec<CatalogService>,
}

#[derive(Clone, Debug, Deserialize)]
struct CatalogService {
    #[serde(rename = "type")]
    service_type: String,
    endpoints: Vec<CatalogEndpoint>,
}

#[derive(Clone, Debug, Deserialize)]
struct CatalogEndpoint {
    interface: String,
    #[serde(default)]
    region_id: Option<String>,
    #[serde(default)]
    region: Option<String>,
    url: String,
}

#[derive(Deserialize)]
struct TokenBody {
    token: TokenFields,
}

#[derive(Deserialize)]
struct TokenFields {
    expires_at: DateTime<Utc>,
    project: IdOnly,
    user: IdOnly,
    #[serde(default)]
    catalog: Vec<CatalogService>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

impl Token {
    /// The endpoint of `service_type` for `region` and `interface`.
    fn endpoint(&self, service_type: &str, region: &str, interface: &str) -> Option<String> {
        self.catalog
            .iter()
            .filter(|s| s.service_type == service_type)
            .flat_map(|s| s.endpoints.iter())
            .find(|e| {
                e.interface == interface
                    && (e.region_id.as_deref() == Some(region)
                        || e.region.as_deref() == Some(region))
            })
            .map(|e| e.url.trim_end_matches('/').to_string())
    }
}

/// A logged-in client of one cloud: one HTTP client, one token at a time.
pub struct Session {
    config: CloudConfig,
    http: Client,
    token: Mutex<Option<Token>>,
}

impl Session {
    /// Log in to the cloud (password auth, project scope).
    pub fn connect(config: CloudConfig) -> Result<Session> {
        let http = Client::builder()
            .user_agent(concat!("amirun/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            // A fresh connection per request: the all-in-one cloud's uwsgi
            // servers close idle connections under a reused one, which
            // reqwest reports as "error sending request".
            .pool_max_idle_per_host(0)
            // Bounds each wait for headers or a body read, not a whole upload.
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|source| OpenStackError::Unreachable {
                url: config.auth_url.clone(),
                source,
            })?;
        let session = Session {
            config,
            http,
            token: Mutex::new(None),
        };
        session.token()?;
        Ok(session)
    }

    /// The cloud this session talks to.
    pub fn config(&self) -> &CloudConfig {
        &self.config
    }

    /// A valid token, renewed first when it is about to expire.
    pub fn token(&self) -> Result<Token> {
        let mut slot = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = slot.as_ref() {
            let left = t.expires_at - Utc::now();
            if left.to_std().is_ok_and(|d| d > RENEW_BEFORE) {
                return Ok(t.clone());
            }
        }
        let fresh = self.authenticate()?;
        *slot = Some(fresh.clone());
        Ok(fresh)
    }

    /// The id of the project the token is scoped to.
    pub fn project_id(&self) -> Result<String> {
        Ok(self.token()?.project_id)
    }

    fn authenticate(&self) -> Result<Token> {
        let c = &self.config;
        let url = format!("{}/auth/tokens", c.identity_v3());
        let body = json!({
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {"user": {
                        "name": c.username,
                        "domain": {"name": c.user_domain_name},
                        "password": c.password,
                    }},
                },
                "scope": {"project": {
                    "name": c.project_name,
                    "domain": {"name": c.project_domain_name},
                }},
            }
        });
        let resp = self
            .http
            .post(&url)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .map_err(|source| OpenStackError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let resp = check("POST", &url, resp)?;
        let value = resp
            .headers()
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| OpenStackError::Protocol {
                url: url.clone(),
                reason: "no X-Subject-Token header".into(),
            })?;
        let body: TokenBody = read_json(&url, resp)?;
        Ok(Token {
            value,
            expires_at: body.token.expires_at,
            project_id: body.token.project.id,
            user_id: body.token.user.id,
            catalog: body.token.catalog,
        })
    }

    /// The base URL of a service (`image`, `compute`, …) from the catalog.
    pub fn endpoint(&self, service_type: &str) -> Result<String> {
        let c = &self.config;
        self.token()?
            .endpoint(service_type, &c.region_name, &c.interface)
            .ok_or_else(|| OpenStackError::NoEndpoint {
                service_type: service_type.to_string(),
                interface: c.interface.clone(),
                region: c.region_name.clone(),
            })
    }

    /// A request to `path` under the endpoint of `service_type`, with the token.
    pub fn request(&self, method: Method, service_type: &str, path: &str) -> Result<Request> {
        let url = format!("{}{}", self.endpoint(service_type)?, path);
        let builder = self
            .http
            .request(method.clone(), &url)
            .header("X-Auth-Token", self.token()?.value);
        Ok(Request {
            method,
            url,
            builder,
        })
    }
}

/// A request under construction; [`Request::send`] checks the status.
pub struct Request {
    method: Method,
    url: String,
    builder: RequestBuilder,
}

impl Request {
    /// Add a header.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.builder = self.builder.header(name, value);
        self
    }

    /// A JSON body.
    pub fn json(self, body: &Value) -> Request {
        self.json_as(body, "application/json")
    }

    /// A JSON body with another media type (Glance's JSON patch).
    pub fn json_as(mut self, body: &Value, content_type: &str) -> Request {
        self.builder = self
            .builder
            .header("Content-Type", content_type)
            .body(body.to_string());
        self
    }

    /// Any body.
    pub fn body(mut self, body: reqwest::blocking::Body) -> Request {
        self.builder = self.builder.body(body);
        self
    }

    /// Send; an error status becomes [`OpenStackError::Status`] with the
    /// cloud's message.
    pub fn send(self) -> Result<Response> {
        let resp = self
            .builder
            .send()
            .map_err(|source| OpenStackError::Unreachable {
                url: self.url.clone(),
                source,
            })?;
        check(self.method.as_str(), &self.url, resp)
    }

    /// Send and parse the JSON answer.
    pub fn send_json<T: serde::de::DeserializeOwned>(self) -> Result<T> {
        let url = self.url.clone();
        let resp = self.send()?;
        read_json(&url, resp)
    }
}

fn check(method: &str, url: &str, resp: Response) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let text = resp.text().unwrap_or_default();
    Err(OpenStackError::Status {
        method: method.to_string(),
        url: url.to_string(),
        status: status.as_u16(),
        message: error_message(&text),
    })
}

/// The message of an OpenStack error body: Nova's `{"itemNotFound":
/// {"message": …}}`, Keystone's `{"error": {"message": …}}`, Glance's
/// plain text or HTML; the first line of anything else.
pub(crate) fn error_message(body: &str) -> String {
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(body) {
        for v in map.values() {
            if let Some(m) = v.get("message").and_then(Value::as_str) {
                return m.to_string();
            }
        }
        if let Some(m) = map.get("message").and_then(Value::as_str) {
            return m.to_string();
        }
    }
    // Glance/webob answers HTML or plain text: keep the last non-empty
    // line without tags (the message; the first is the status title).
    let stripped: String = {
        let mut out = String::new();
        let mut in_tag = false;
        for ch in body.chars() {
            match ch {
                '<' => in_tag = true,
                // A tag ends a line: the message is the last text between tags.
                '>' => {
                    in_tag = false;
                    out.push('\n');
                }
                c if !in_tag => out.push(c),
                _ => {}
            }
        }
        out
    };
    stripped
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("(empty body)")
        .chars()
        .take(400)
        .collect()
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(url: &str, resp: Response) -> Result<T> {
    let bytes = resp.bytes().map_err(|source| OpenStackError::Unreachable {
        url: url.to_string(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| OpenStackError::Protocol {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOUDS: &str = "\
clouds:
  amirun-aio:
    region_name: RegionOne
    auth:
      auth_url: http://127.0.0.1:5000/v3
      username: admin
      password: secret
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
  other:
    auth:
      auth_url: http://example.invalid:5000
      username: u
      password: p
      project_name: p
";

    #[test]
    fn parses_a_cloud_with_defaults() {
        let c = CloudConfig::parse(CLOUDS, "other").unwrap();
        assert_eq!(c.region_name, "RegionOne");
        assert_eq!(c.interface, "public");
        assert_eq!(c.user_domain_name, "Default");
        assert_eq!(c.identity_v3(), "http://example.invalid:5000/v3");
        let a = CloudConfig::parse(CLOUDS, "amirun-aio").unwrap();
        assert_eq!(a.identity_v3(), "http://127.0.0.1:5000/v3");
        assert_eq!(a.password, "secret");
    }

    #[test]
    fn names_the_clouds_when_one_is_missing() {
        let e = CloudConfig::parse(CLOUDS, "nope").unwrap_err();
        assert!(e.contains("amirun-aio, other"), "{e}");
    }

    #[test]
    fn finds_endpoints_by_region_and_interface() {
        let catalog: Vec<CatalogService> = serde_json::from_value(json!([
            {"type": "image", "endpoints": [
                {"interface": "public", "region_id": "RegionOne", "url": "http://127.0.0.1:9292/"},
                {"interface": "internal", "region_id": "RegionOne", "url": "http://10.0.0.1:9292"},
            ]},
        ]))
        .unwrap();
        let t = Token {
            value: String::new(),
            expires_at: Utc::now(),
            project_id: String::new(),
            user_id: String::new(),
            catalog,
        };
        assert_eq!(
            t.endpoint("image", "RegionOne", "public").as_deref(),
            Some("http://127.0.0.1:9292")
        );
        assert_eq!(t.endpoint("image", "RegionTwo", "public"), None);
        assert_eq!(t.endpoint("compute", "RegionOne", "public"), None);
    }

    #[test]
    fn reads_error_messages_of_each_service() {
        assert_eq!(
            error_message(
                r#"{"itemNotFound": {"message": "Image x could not be found.", "code": 404}}"#
            ),
            "Image x could not be found."
        );
        assert_eq!(
            error_message(
                r#"{"error": {"message": "The request you have made requires authentication.", "code": 401}}"#
            ),
            "The request you have made requires authentication."
        );
        assert_eq!(
            error_message("<html><head><title>404 Not Found</title></head><body><h1>404 Not Found</h1>No image found with ID x<br /><br /></body></html>"),
            "No image found with ID x"
        );
    }
}
