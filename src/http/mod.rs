//! `amirun serve`: the EC2 Query API over HTTP, so the aws CLI, boto3, the
//! SDKs and Terraform drive amirun with only an endpoint URL.
//!
//! A request goes through five steps, none of which holds any state of its
//! own (so the server can restart at any time without losing anything):
//!
//! 1. read the body (at most [`MAX_BODY`]) and the form parameters of the
//!    body and the query string; `Action` picks the handler in
//!    [`crate::api::ACTIONS`] (`MissingAction`, `InvalidAction` otherwise);
//! 2. parse the SigV4 `Authorization` header ([`sigv4`]): the access key
//!    selects the account ([`Credentials::account_for`]), the credential
//!    scope the region; in strict mode the signature is verified;
//!    `sts:GetCallerIdentity` is answered here, in STS's XML ([`sts`]);
//! 3. turn the parameters into the CLI's JSON with botocore's model
//!    ([`model::parse_input`]);
//! 4. open a [`Service`] on a blocking thread and run the action with
//!    [`crate::api::invoke`], as the CLI does (which also answers
//!    `DryRun=true` with `DryRunOperation` once the request is checked);
//! 5. render the JSON result as EC2's XML ([`model::render_output`]), or
//!    the error as EC2's error body, and log one line.
//!
//! The server protects itself and the host ([`Limits`]): a client has
//! [`Limits::header_timeout`] to send its request line and headers (also
//! between requests on a kept-alive connection) and [`Limits::body_timeout`]
//! to send its body, else the connection is closed; at most
//! [`Limits::max_connections`] connections are served at once (more wait in
//! the kernel's accept queue). API callers never name host paths: imports
//! take `http(s)://` URLs or files under `--import-dir`
//! ([`crate::service::import_policy`]). Listening on a non-loopback address
//! needs `--strict` (or an explicit `--insecure-allow-remote`).

pub mod model;
pub mod sigv4;
pub mod sts;

use crate::machine::AccelRequest;
use crate::paths::Paths;
use crate::service::import_policy::ImportPolicy;
use crate::service::{Caller, Error, ErrorCode, Service, ServiceOptions};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// The XML namespace of EC2's responses.
const XMLNS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// One configured access key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub access_key_id: String,
    /// For strict mode.
    pub secret: Option<String>,
    /// The account this key acts as (default: the key id when it is 12
    /// digits, else the default account).
    pub account: Option<String>,
}

impl std::str::FromStr for AccessKey {
    type Err = String;
    /// `KEY[:SECRET[:ACCOUNT]]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.splitn(3, ':');
        let access_key_id = parts.next().unwrap_or_default().to_string();
        if access_key_id.is_empty() {
            return Err("an access key is KEY[:SECRET[:ACCOUNT]]".into());
        }
        let secret = parts.next().filter(|x| !x.is_empty()).map(String::from);
        let account = parts.next().filter(|x| !x.is_empty()).map(String::from);
        if let Some(a) = &account {
            if !crate::domain::AccountId::is_valid(a) {
                return Err(format!(
                    "account '{a}' of key {access_key_id} is not 12 digits"
                ));
            }
        }
        Ok(AccessKey {
            access_key_id,
            secret,
            account,
        })
    }
}

/// Who may call, and as which account.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub keys: Vec<AccessKey>,
    /// Account of unknown keys and of unsigned requests.
    pub default_account: String,
    /// Verify signatures; refuse unsigned requests and unknown keys.
    pub strict: bool,
}

impl Credentials {
    /// The account an access key acts as: its configured account, else the
    /// key itself when it is a 12-digit account id (as other local AWS
    /// emulators do), else the default account.
    pub fn account_for(&self, access_key: &str) -> String {
        if let Some(a) = self
            .keys
            .iter()
            .find(|k| k.access_key_id == access_key)
            .and_then(|k| k.account.clone())
        {
            return a;
        }
        if crate::domain::AccountId::is_valid(access_key) {
            return access_key.to_string();
        }
        self.default_account.clone()
    }
}

/// How long clients may take and how many may connect at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time to send a request's line and headers, counted from when the
    /// server starts waiting for them (so it also bounds idle keep-alive).
    pub header_timeout: Duration,
    /// Time to send a request's body once its headers are in.
    pub body_timeout: Duration,
    /// Connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 64,
        }
    }
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub paths: Paths,
    pub service: ServiceOptions,
    /// Region of requests that name none (unsigned).
    pub default_region: String,
    pub credentials: Credentials,
    pub accel: AccelRequest,
    /// The only host directory API callers may import `file://` URLs from.
    pub import_dir: Option<PathBuf>,
    /// Serve a non-loopback address without `strict` (the operator said so).
    pub insecure_allow_remote: bool,
    pub limits: Limits,
}

struct Shared {
    options: ServeOptions,
}

/// Run the server until SIGINT or SIGTERM. Prints
/// `amirun serve: listening on http://ADDR` on stdout once bound.
pub fn serve(mut options: ServeOptions) -> Result<(), Error> {
    if !options.listen.ip().is_loopback()
        && !options.credentials.strict
        && !options.insecure_allow_remote
    {
        return Err(Error::invalid_value(
            format!(
                "Refusing to listen on {} without --strict: anyone who can reach it could act as any account. \
                 Use --strict with --access-key KEY:SECRET, listen on 127.0.0.1, or accept the risk with --insecure-allow-remote",
                options.listen
            ),
        ));
    }
    if options.limits.max_connections == 0 {
        return Err(Error::invalid_value("--max-connections must be at least 1"));
    }
    if let Some(dir) = &options.import_dir {
        let real = dir
            .canonicalize()
            .ok()
            .filter(|d| d.is_dir())
            .ok_or_else(|| {
                Error::invalid_value(format!(
                    "The import directory {} is not a directory",
                    dir.display()
                ))
            })?;
        options.import_dir = Some(real);
    }
    // Whatever the caller set, API callers get the remote policy.
    options.service.import_policy = ImportPolicy::Remote {
        import_dir: options.import_dir.clone(),
    };
    // Check the state directory and catalog once before taking requests.
    Service::open(options.paths.clone(), options.service.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::internal("Cannot start the async runtime").with_source(e))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|e| {
                Error::internal(format!("Cannot listen on {}", options.listen)).with_source(e)
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::internal("Cannot read the bound address").with_source(e))?;
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "amirun serve: listening on http://{addr}");
            let _ = out.flush();
        }
        let limits = options.limits;
        let shared = Arc::new(Shared { options });
        let app = axum::Router::new().fallback(handle).with_state(shared);
        accept_loop(listener, app, limits).await;
        eprintln!("amirun serve: stopped");
        Ok(())
    })
}

/// Accept connections until SIGINT or SIGTERM, at most
/// `limits.max_connections` at once, each with hyper's header read timeout;
/// then let the open ones finish their requests (for up to a minute).
async fn accept_loop(listener: tokio::net::TcpListener, app: axum::Router, limits: Limits) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        // Take a slot before accepting, so excess clients wait in the backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    eprintln!("amirun serve: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // Errors here are clients' (timeouts, resets): nothing to report.
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(60), graceful.shutdown()).await;
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn request_id() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// HTTP status for an error, as EC2 answers it ([`ErrorCode::http_status`]).
fn status_of(e: &Error) -> StatusCode {
    StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn xml_response(status: StatusCode, body: String) -> Response {
    (status, [("content-type", "text/xml;charset=UTF-8")], body).into_response()
}

fn error_response(e: &Error, request_id: &str) -> Response {
    error_response_with(e, request_id, status_of(e))
}

/// Credentials that cannot be validated are a 401, as on EC2 (an
/// `AuthFailure` from the service, e.g. another account's AMI, is a 403).
fn error_response_with(e: &Error, request_id: &str, status: StatusCode) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>",
        model::escape(e.code().as_str()),
        model::escape(e.message())
    );
    xml_response(status, body)
}

/// What one request resolved to, for the log line.
struct Outcome {
    action: String,
    account: String,
    region: String,
    response: Response,
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let id = request_id();
    let o = process(&shared, &method, &uri, &headers, body, &id).await;
    let status = o.response.status().as_u16();
    eprintln!(
        "{} {} {} action={} account={} region={} status={status} {} ms",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        method,
        uri.path(),
        if o.action.is_empty() { "-" } else { &o.action },
        if o.account.is_empty() {
            "-"
        } else {
            &o.account
        },
        if o.region.is_empty() { "-" } else { &o.region },
        started.elapsed().as_millis()
    );
    o.response
}

async fn process(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    id: &str,
) -> Outcome {
    let mut o = Outcome {
        action: String::new(),
        account: String::new(),
        region: String::new(),
        response: StatusCode::OK.into_response(),
    };
    let fail = |mut o: Outcome, e: Error| {
        o.response = error_response(&e, id);
        o
    };
    let deny = |mut o: Outcome, message: String| {
        let e = Error::new(ErrorCode::AuthFailure, message);
        o.response = error_response_with(&e, id, StatusCode::UNAUTHORIZED);
        o
    };
    let body_timeout = shared.options.limits.body_timeout;
    let bytes: Bytes =
        match tokio::time::timeout(body_timeout, axum::body::to_bytes(body, MAX_BODY)).await {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => {
                return fail(
                    o,
                    Error::new(
                        ErrorCode::RequestEntityTooLarge,
                        format!(
                            "The request body is larger than {MAX_BODY} bytes or could not be read"
                        ),
                    ),
                )
            }
            Err(_) => {
                let mut o = fail(
                    o,
                    Error::new(
                        ErrorCode::RequestTimeout,
                        format!(
                            "The request body was not received within {} s",
                            body_timeout.as_secs_f64()
                        ),
                    ),
                );
                // The rest of the body may still come: do not keep reading it.
                o.response
                    .headers_mut()
                    .insert("connection", axum::http::HeaderValue::from_static("close"));
                return o;
            }
        };
    if method != Method::POST && method != Method::GET {
        return fail(
            o,
            Error::new(
                ErrorCode::InvalidAction,
                format!("Method {method} is not supported; use POST"),
            ),
        );
    }
    let query = uri.query().unwrap_or("");
    let mut params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    if method == Method::POST {
        params.extend(form_urlencoded::parse(&bytes).into_owned());
    }
    let mut action = None;
    let mut version = None;
    let mut rest = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "Action" => action = Some(v),
            "Version" => version = Some(v),
            k if k.starts_with("X-Amz-") => {}
            _ => rest.push((k, v)),
        }
    }
    let Some(action) = action.filter(|a| !a.is_empty()) else {
        return fail(
            o,
            Error::new(
                ErrorCode::MissingAction,
                "The request must contain the parameter Action",
            ),
        );
    };
    o.action = action.clone();

    // Who is calling.
    let creds = &shared.options.credentials;
    let (account, region) = match headers.get("authorization") {
        Some(h) => {
            let auth = match h
                .to_str()
                .map_err(|_| sigv4::AuthError("not text".into()))
                .and_then(sigv4::parse)
            {
                Ok(a) => a,
                Err(e) => {
                    return deny(
                        o,
                        format!(
                            "AWS was not able to validate the provided access credentials: {e}"
                        ),
                    )
                }
            };
            if creds.strict {
                let secret = creds
                    .keys
                    .iter()
                    .find(|k| k.access_key_id == auth.access_key)
                    .and_then(|k| k.secret.clone());
                let Some(secret) = secret else {
                    return deny(
                        o,
                        format!("The access key ID '{}' is not known", auth.access_key),
                    );
                };
                let req = sigv4::Request {
                    method: method.as_str(),
                    path: uri.path(),
                    query,
                    headers: headers
                        .iter()
                        .map(|(n, v)| {
                            (
                                n.as_str().to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                    body: &bytes,
                };
                if let Err(e) = sigv4::verify(&auth, &req, &secret, chrono::Utc::now()) {
                    if e.code() == ErrorCode::AuthFailure {
                        return deny(o, e.to_string());
                    }
                    return fail(o, Error::new(e.code(), e.to_string()));
                }
            }
            (creds.account_for(&auth.access_key), auth.region)
        }
        None if creds.strict => return deny(
            o,
            "The request is not signed; strict mode needs an AWS4-HMAC-SHA256 Authorization header"
                .into(),
        ),
        None => (
            creds.default_account.clone(),
            shared.options.default_region.clone(),
        ),
    };
    o.account = account.clone();
    o.region = region.clone();
    let caller = match Caller::new(account, region) {
        Ok(c) => c,
        Err(e) => return fail(o, e),
    };
    if sts::is_sts(&action, version.as_deref()) {
        o.response = if rest.is_empty() {
            let who = sts::GetCallerIdentityResult::root_of(&caller.account.to_string());
            xml_response(StatusCode::OK, who.to_xml(id))
        } else {
            let names: Vec<&str> = rest.iter().map(|(k, _)| k.as_str()).collect();
            let message = format!(
                "GetCallerIdentity takes no parameters; got {}",
                names.join(", ")
            );
            xml_response(
                StatusCode::BAD_REQUEST,
                sts::error_xml("InvalidParameterValue", &message, id),
            )
        };
        return o;
    }
    if crate::api::handler(&action).is_none() {
        return fail(
            o,
            Error::new(
                ErrorCode::InvalidAction,
                format!("The action {action} is not valid for this web service."),
            ),
        );
    }
    let input = match model::parse_input(&action, &rest) {
        Ok(v) => v,
        Err(e) => return fail(o, e),
    };
    let (paths, service_options, accel) = (
        shared.options.paths.clone(),
        shared.options.service.clone(),
        shared.options.accel,
    );
    let (call_action, invoke_action) = (action.clone(), action.clone());
    let result = tokio::task::spawn_blocking(move || {
        let mut service = Service::open(paths, service_options)?;
        let mut ctx = crate::api::Context::new(&mut service, &caller, accel);
        crate::api::invoke(&mut ctx, &invoke_action, &input)
    })
    .await;
    let result = match result {
        Ok(r) => r,
        Err(e) => Err(Error::internal(format!("{call_action} failed unexpectedly")).with_source(e)),
    };
    match result {
        Ok(value) => {
            let body = model::render_output(&action, &value.unwrap_or_default());
            o.response = xml_response(
                StatusCode::OK,
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"{XMLNS}\"><requestId>{id}</requestId>{body}</{action}Response>"
                ),
            );
            o
        }
        Err(e) => {
            if status_of(&e).is_server_error() {
                eprintln!("{}", e.chain());
            }
            fail(o, e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_keys_select_accounts() {
        let c = Credentials {
            keys: vec!["AKIAOTHER:secret:222222222222".parse().unwrap()],
            default_account: "000000000000".into(),
            strict: false,
        };
        assert_eq!(c.account_for("111111111111"), "111111111111");
        assert_eq!(c.account_for("AKIAOTHER"), "222222222222");
        assert_eq!(c.account_for("test"), "000000000000");
        assert!("K:S:123".parse::<AccessKey>().is_err());
        assert_eq!(
            "K".parse::<AccessKey>().unwrap(),
            AccessKey {
                access_key_id: "K".into(),
                secret: None,
                account: None
            }
        );
    }
}
