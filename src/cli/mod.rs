//! The command line: `aws ec2`'s verbs, options and JSON shapes.
//!
//! This module only translates. The EC2 verbs are made from botocore's model
//! ([`verbs`]): every action of [`crate::api::ACTIONS`] is a verb whose
//! options are its input shape's members, turned into the same request JSON
//! the HTTP API parses and given to [`crate::api::invoke`]. amirun's own
//! verbs (fetch-image, wait, ssh, boot-test, serve, the baking verbs, the
//! internal ones) are clap-derive commands that call
//! [`crate::service::Service`]. Results render with [`output`]. Errors are
//! the aws CLI's: an unknown option or a value that does not parse exits
//! 252 (with the usage line, or "Error parsing parameter"), a service error
//! prints EC2's code, a one-line message and the cause chain and exits 254.

pub mod baking;
pub mod output;
pub mod params;
pub mod shorthand;
pub mod verbs;

use crate::paths::Paths;
use crate::service::import_policy::ImportPolicy;
use crate::service::{Caller, Error, ErrorCode, Service, ServiceOptions};
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code for errors the service reported.
pub const EXIT_SERVICE_ERROR: u8 = 254;
/// Exit code for options that could not be parsed.
pub const EXIT_PARAM_ERROR: u8 = 252;

/// The aws CLI's usage blurb, printed before an error about the command line.
const USAGE: &str = "usage: amirun [options] <command> [parameters]
To see help text, you can run:

  amirun --help
  amirun <command> --help
";

#[derive(Parser, Debug)]
#[command(
    name = "amirun",
    version,
    about = "A local EC2 for AMIs: run, bake and boot-test real images with aws ec2's verbs",
    after_help = "State lives in $AMIRUN_HOME (default ~/.local/share/amirun).",
    subcommand_required = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(flatten)]
    globals: Globals,
    /// amirun's own verbs (the EC2 verbs are added from the model).
    #[command(subcommand)]
    command: Option<Command>,
}

/// Options every verb takes, before or after it.
#[derive(Args, Debug)]
#[command(next_help_heading = "Global options")]
struct Globals {
    /// Region to work in.
    #[arg(
        long,
        global = true,
        env = "AMIRUN_REGION",
        default_value = "us-east-1"
    )]
    region: String,
    /// 12-digit account id of the caller.
    #[arg(
        long,
        global = true,
        env = "AMIRUN_ACCOUNT",
        default_value = "000000000000"
    )]
    account: String,
    /// Output format.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "AMIRUN_OUTPUT",
        default_value = "json"
    )]
    output: output::Format,
    /// JMESPath query applied to the result.
    #[arg(long, global = true)]
    query: Option<String>,
    /// Extra catalog file (repeatable).
    #[arg(long, global = true)]
    catalog: Vec<PathBuf>,
    /// Log what amirun does on stderr.
    #[arg(long, global = true)]
    debug: bool,
}

/// amirun's own verbs. The EC2 verbs are not here: [`verbs`] makes them.
#[derive(Subcommand, Debug)]
enum Command {
    /// Download and verify an AMI's disks now instead of at first launch (amirun's own verb).
    FetchImage(FetchImageArgs),
    /// Wait until instances or images reach a state.
    Wait(WaitArgs),
    /// Open an ssh session to a running instance (amirun's own verb).
    Ssh(SshArgs),
    /// Boot an AMI, wait for its console (or ssh) to show it works, report timings as JSON, terminate.
    BootTest(BootTestArgs),
    /// Serve the EC2 Query API over HTTP (aws CLI, boto3, SDKs, Terraform: set the endpoint URL).
    Serve(ServeArgs),
    #[command(flatten)]
    Baking(baking::BakingCommand),
    /// Internal: the per-instance supervisor.
    #[command(name = "__supervise", hide = true)]
    Supervise { launch_spec: PathBuf },
    /// Internal: relay one guest connection to the instance metadata service.
    #[command(name = "__imds-relay", hide = true)]
    ImdsRelay { socket: PathBuf },
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "AMIRUN_LISTEN", default_value = "127.0.0.1:8773")]
    listen: std::net::SocketAddr,
    /// Access key: KEY[:SECRET[:ACCOUNT]] (repeatable, or comma-separated in the variable).
    /// A 12-digit key id is that account; other unknown keys act as --account.
    #[arg(long = "access-key", env = "AMIRUN_ACCESS_KEYS", value_delimiter = ',')]
    access_keys: Vec<crate::http::AccessKey>,
    /// Verify SigV4 signatures against the secrets of --access-key; refuse anything else.
    /// As EC2 does: X-Amz-Date must be within 15 minutes of the server's clock
    /// (RequestExpired), and the payload hash is computed from the body received, so
    /// a changed body fails like a wrong secret (AuthFailure).
    #[arg(long)]
    strict: bool,
    /// Listen on a non-loopback address without --strict (anyone who can reach it
    /// acts as any account). Without this, such a --listen is refused.
    #[arg(long)]
    insecure_allow_remote: bool,
    /// The only host directory API callers may import file:// URLs from (ImportImage,
    /// ImportSnapshot, RegisterImage ImageLocation), like an S3 bucket. Paths that
    /// leave it (.., symlinks) are refused; keep it writable only by trusted users.
    /// Without it, API callers may import only http:// and https:// URLs.
    #[arg(long, env = "AMIRUN_IMPORT_DIR")]
    import_dir: Option<PathBuf>,
    /// Seconds a client has to send a request's line and headers (also the idle
    /// time allowed between requests on a kept-alive connection); then it is cut off.
    #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
    header_timeout: f64,
    /// Seconds a client has to send a request's body (at most 1 MiB); then it gets
    /// RequestTimeout (408) and the connection is closed.
    #[arg(long, default_value_t = 30.0, value_parser = positive_seconds)]
    body_timeout: f64,
    /// Connections served at once; more wait in the listen backlog until one closes.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100000))]
    max_connections: u64,
    /// auto, kvm or tcg for instances launched through the API.
    #[arg(long, env = "AMIRUN_ACCEL", default_value = "auto")]
    accel: String,
}

#[derive(Args, Debug)]
struct WaitArgs {
    /// instance-running, instance-stopped, instance-terminated, image-available.
    waiter: String,
    #[arg(long, num_args = 1..)]
    instance_ids: Vec<String>,
    #[arg(long, num_args = 1..)]
    image_ids: Vec<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

#[derive(Args, Debug)]
struct SshArgs {
    instance_id: String,
    /// Login user (default: the image vendor's: admin, ubuntu, ec2-user, …).
    #[arg(long, short = 'l')]
    user: Option<String>,
    /// A command to run instead of a login shell.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Args, Debug)]
struct BootTestArgs {
    #[arg(long)]
    image_id: String,
    #[arg(long)]
    instance_type: Option<String>,
    /// Regular expression the console must match (default: a userspace marker).
    #[arg(long)]
    expect: Option<String>,
    /// Wait for ssh to answer instead of (or after) the console.
    #[arg(long)]
    wait_ssh: bool,
    /// Seconds before the test fails.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Text, file://PATH or fileb://PATH.
    #[arg(long)]
    user_data: Option<String>,
    #[arg(long)]
    key_name: Option<String>,
    #[arg(long, env = "AMIRUN_ACCEL", default_value = "auto")]
    accel: String,
    /// Keep the instance instead of terminating it.
    #[arg(long)]
    keep: bool,
}

#[derive(Args, Debug)]
struct FetchImageArgs {
    #[arg(long)]
    image_id: String,
}

/// A failure before or after the service was called.
#[derive(Debug)]
enum Failure {
    /// An option's value could not be parsed: "Error parsing parameter '--x'".
    Param(String, String),
    /// A value parsed but does not fit the model: "Parameter validation failed".
    Validation(String),
    /// The service refused or failed.
    Service(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Service(e)
    }
}

fn param<T: DeserializeOwned>(option: &str, items: &[String]) -> Result<Vec<T>, Failure> {
    let values =
        shorthand::parse_list(items).map_err(|e| Failure::Param(option.into(), e.to_string()))?;
    values
        .into_iter()
        .map(|v| {
            serde_json::from_value(v).map_err(|e| Failure::Param(option.into(), e.to_string()))
        })
        .collect()
}

fn param_one<T: DeserializeOwned>(option: &str, item: &str) -> Result<T, Failure> {
    let v = shorthand::parse(item).map_err(|e| Failure::Param(option.into(), e.to_string()))?;
    serde_json::from_value(v).map_err(|e| Failure::Param(option.into(), e.to_string()))
}

/// What the command line asks for.
enum Invocation {
    /// An EC2 verb: its action and parsed options.
    Action(Globals, &'static str, ArgMatches),
    /// One of amirun's own verbs.
    Own(Cli),
}

/// The whole command line: amirun's own verbs (derive) plus one verb per
/// action of the API that no own verb claims. Only `named`, the verb the
/// command line names, gets its options built (the others only their names,
/// for `--help`).
fn command_line(named: Option<&str>) -> (clap::Command, Vec<(&'static str, &'static str)>) {
    // The internal verbs (a supervisor, an IMDS relay per guest connection)
    // start often and need none of them.
    if named.is_some_and(|n| n.starts_with("__")) {
        return (Cli::command(), Vec::new());
    }
    let mut cmd = Cli::command();
    let own: Vec<String> = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    let actions: Vec<(&'static str, &'static str)> = verbs::all()
        .filter(|(_, v)| !own.iter().any(|o| o == v))
        .collect();
    for (action, verb) in &actions {
        let options = named == Some(*verb);
        cmd = cmd.subcommand(verbs::command(action, verb, options));
    }
    (cmd, actions)
}

/// The verb a command line names: its first word that is not a global option
/// or its value (`amirun --region r describe-images …`, `amirun help VERB`).
fn named_verb(cmd: &clap::Command, argv: &[String]) -> Option<String> {
    let takes_value = |long: &str| {
        cmd.get_arguments()
            .any(|a| a.get_long() == Some(long) && a.get_action().takes_values())
    };
    let mut words = argv.iter().skip(1);
    while let Some(w) = words.next() {
        if let Some(long) = w.strip_prefix("--") {
            if !long.contains('=') && takes_value(long) {
                words.next();
            }
        } else if w == "help" {
            return words.next().cloned();
        } else if !w.starts_with('-') {
            return Some(w.clone());
        }
    }
    None
}

/// The words after `verb` that are no option of it, as the aws CLI lists
/// them: an unknown `--x` and the words that follow it, and bare words no
/// option takes.
fn unknown_options(top: &clap::Command, sub: &clap::Command, args: &[String]) -> Vec<String> {
    let find = |long: &str| {
        sub.get_arguments()
            .chain(top.get_arguments())
            .find(|a| a.get_long() == Some(long))
            .map(|a| {
                if !a.get_action().takes_values() {
                    0
                } else if a.get_num_args().is_some_and(|n| n.max_values() > 1) {
                    usize::MAX
                } else {
                    1
                }
            })
    };
    let mut unknown = Vec::new();
    // Values the last option may still take (None: it was unknown).
    let mut room = Some(0);
    for w in args {
        if let Some(long) = w.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, _)) => (n, true),
                None => (long, false),
            };
            room = if name == "help" { Some(0) } else { find(name) };
            match room {
                None => unknown.push(w.clone()),
                Some(_) if inline => room = Some(0),
                Some(_) => {}
            }
        } else if w == "-h" {
            room = Some(0);
        } else {
            match room {
                Some(0) | None => unknown.push(w.clone()),
                Some(n) => room = Some(n.saturating_sub(1)),
            }
        }
    }
    unknown
}

/// Parse the command line, or exit as clap or the aws CLI would.
fn parse(argv: Vec<String>) -> Result<Invocation, ExitCode> {
    let named = named_verb(&Cli::command(), &argv);
    let (mut cmd, actions) = command_line(named.as_deref());
    let action = actions
        .iter()
        .find(|(_, v)| Some(*v) == named.as_deref())
        .map(|(a, _)| *a);
    let usage_error = |message: &str| {
        eprintln!("{USAGE}\n{message}");
        ExitCode::from(EXIT_PARAM_ERROR)
    };
    if let (Some(verb), Some(_)) = (named.as_deref(), action) {
        let at = argv.iter().position(|w| w == verb).unwrap_or(argv.len());
        if argv.get(1).map(String::as_str) != Some("help") {
            let sub = cmd.find_subcommand(verb).expect("the verb was added");
            let unknown = unknown_options(&cmd, sub, &argv[at + 1..]);
            if !unknown.is_empty() {
                return Err(usage_error(&format!(
                    "Unknown options: {}",
                    unknown.join(", ")
                )));
            }
        }
    }
    let mut matches = match cmd.try_get_matches_from_mut(&argv) {
        Ok(m) => m,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if action.is_none()
                || matches!(
                    e.kind(),
                    DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
                )
            {
                e.exit()
            }
            // clap's first line, without its own "error: " prefix.
            let detail = e.to_string();
            let first = detail
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ");
            return Err(usage_error(&format!("amirun: error: {first}")));
        }
    };
    if let Some(action) = action {
        if let Some((_, sub)) = matches.remove_subcommand() {
            let globals = Globals::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
            return Ok(Invocation::Action(globals, action, sub));
        }
    }
    Ok(Invocation::Own(
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()),
    ))
}

/// Run the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args_os()
        .map(|a: OsString| a.to_string_lossy().into_owned())
        .collect();
    let invocation = match parse(argv) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let globals = match &invocation {
        Invocation::Action(g, _, _) => g,
        Invocation::Own(cli) => &cli.globals,
    };
    let filter = if globals.debug {
        "amirun=debug"
    } else {
        "amirun=warn"
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AMIRUN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let (title, result) = match &invocation {
        Invocation::Action(g, action, sub) => (action.to_string(), run_action(g, action, sub)),
        Invocation::Own(cli) => run(cli),
    };
    match result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(value)) => match output::apply_query(value, globals.query.as_deref()) {
            Ok(v) => {
                let mut out = std::io::stdout().lock();
                if let Err(e) = output::render(&mut out, &v, globals.output, &title) {
                    if e.kind() != std::io::ErrorKind::BrokenPipe {
                        eprintln!("Cannot write output: {e}");
                        return ExitCode::from(1);
                    }
                }
                ExitCode::SUCCESS
            }
            Err(m) => {
                eprintln!("{m}");
                ExitCode::from(EXIT_PARAM_ERROR)
            }
        },
        Err(Failure::Param(option, message)) => {
            eprintln!("Error parsing parameter '--{option}': {message}");
            ExitCode::from(EXIT_PARAM_ERROR)
        }
        Err(Failure::Validation(message)) => {
            eprintln!("Parameter validation failed:\n{message}");
            ExitCode::from(EXIT_PARAM_ERROR)
        }
        Err(Failure::Service(e)) => {
            eprintln!("{}", e.chain());
            ExitCode::from(if request_shape_error(&e) {
                EXIT_PARAM_ERROR
            } else {
                EXIT_SERVICE_ERROR
            })
        }
    }
}

/// Whether the service refused the request for its shape: a member missing,
/// unknown, or of the wrong type, found when the request is deserialized
/// into the action's request type ([`crate::api::request`], whose
/// InvalidParameterValue says "Value for parameter …"). botocore validates
/// these before sending, so the aws CLI exits 252 for them, not 254.
fn request_shape_error(e: &Error) -> bool {
    match e.code() {
        ErrorCode::MissingParameter | ErrorCode::UnknownParameter => true,
        ErrorCode::InvalidParameterValue => e.message().starts_with("Value for parameter "),
        _ => false,
    }
}

/// The service as the CLI opens it: the local user, any file:// URL.
fn open_service(globals: &Globals) -> crate::service::Result<Service> {
    Service::open(
        Paths::from_env(),
        ServiceOptions {
            extra_catalogs: globals.catalog.clone(),
            progress: std::io::stderr().is_terminal(),
            // The CLI acts as the local user: any file:// URL.
            import_policy: ImportPolicy::LocalUser,
            ..ServiceOptions::from_env()
        },
    )
}

/// An EC2 verb: its request goes to the same handler the HTTP API calls.
fn run_action(globals: &Globals, action: &str, sub: &ArgMatches) -> Result<Option<Value>, Failure> {
    let call = verbs::request(action, sub)?;
    tracing::debug!(action, request = %call.request, "invoke");
    let caller = Caller::new(globals.account.clone(), globals.region.clone())?;
    let mut service = open_service(globals)?;
    let mut context = crate::api::Context::new(&mut service, &caller, call.accel);
    let result = crate::api::invoke(&mut context, action, &call.request)?;
    Ok(result.map(|v| verbs::display(action, v)))
}

fn run(cli: &Cli) -> (String, Result<Option<Value>, Failure>) {
    let title = format!("{:?}", cli.command)
        .trim_start_matches("Some(")
        .split('(')
        .next()
        .unwrap_or_default()
        .to_string();
    (title, dispatch(cli))
}

fn blob_arg(option: &str, value: &str) -> Result<Vec<u8>, Failure> {
    let path = value
        .strip_prefix("fileb://")
        .or_else(|| value.strip_prefix("file://"));
    match path {
        Some(p) => std::fs::read(p)
            .map_err(|e| Failure::Param(option.into(), format!("cannot read {p}: {e}"))),
        None => Ok(value.as_bytes().to_vec()),
    }
}

fn positive_seconds(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!(
            "'{value}' is not a number of seconds between 0 and 86400"
        )),
    }
}

fn accel_arg(value: &str) -> Result<crate::machine::AccelRequest, Failure> {
    value
        .parse()
        .map_err(|e: crate::machine::MachineError| Failure::Param("accel".into(), e.to_string()))
}

/// amirun's own verbs.
fn dispatch(cli: &Cli) -> Result<Option<Value>, Failure> {
    let Some(command) = &cli.command else {
        unreachable!("clap requires a verb")
    };
    let g = &cli.globals;
    if let Command::ImdsRelay { socket } = command {
        // Nothing to say to the guest on failure: closing is the answer.
        let _ = crate::metadata::imds::relay(socket);
        return Ok(None);
    }
    if let Command::Serve(a) = command {
        Caller::new(g.account.clone(), g.region.clone())?;
        crate::http::serve(crate::http::ServeOptions {
            listen: a.listen,
            paths: Paths::from_env(),
            service: ServiceOptions {
                extra_catalogs: g.catalog.clone(),
                progress: false,
                // `serve` replaces this with the remote policy in any case.
                import_policy: ImportPolicy::Remote {
                    import_dir: a.import_dir.clone(),
                },
                ..ServiceOptions::from_env()
            },
            default_region: g.region.clone(),
            credentials: crate::http::Credentials {
                keys: a.access_keys.clone(),
                default_account: g.account.clone(),
                strict: a.strict,
            },
            accel: accel_arg(&a.accel)?,
            import_dir: a.import_dir.clone(),
            insecure_allow_remote: a.insecure_allow_remote,
            limits: crate::http::Limits {
                header_timeout: std::time::Duration::from_secs_f64(a.header_timeout),
                body_timeout: std::time::Duration::from_secs_f64(a.body_timeout),
                max_connections: a.max_connections as usize,
            },
        })?;
        return Ok(None);
    }
    if let Command::Supervise { launch_spec } = command {
        return match crate::instance::supervisor::run(launch_spec) {
            Ok(_) => Ok(None),
            Err(e) => Err(Failure::Service(e.into())),
        };
    }
    let caller = Caller::new(g.account.clone(), g.region.clone())?;
    let open = || open_service(g);
    match command {
        Command::FetchImage(a) => {
            let disks = open()?.fetch_image(&caller, &a.image_id)?;
            Ok(Some(json!({ "ImageId": a.image_id, "Disks": disks })))
        }
        Command::Wait(a) => {
            wait(&mut open()?, &caller, a)?;
            Ok(None)
        }
        Command::Ssh(a) => {
            let target = open()?.ssh_target(&caller, &a.instance_id, a.user.as_deref())?;
            ssh(&target, &a.command)
        }
        Command::BootTest(a) => {
            let input = crate::service::boot_test::BootTestInput {
                image_id: a.image_id.clone(),
                instance_type: a.instance_type.clone(),
                expect: a.expect.clone(),
                wait_ssh: a.wait_ssh,
                timeout: std::time::Duration::from_secs(a.timeout),
                user_data: a
                    .user_data
                    .as_deref()
                    .map(|u| blob_arg("user-data", u))
                    .transpose()?,
                key_name: a.key_name.clone(),
                accel: accel_arg(&a.accel)?,
                keep: a.keep,
            };
            let report = open()?.boot_test(&caller, &input)?;
            let ok = report.success;
            let value = serde_json::to_value(report).expect("serializable");
            if ok {
                Ok(Some(value))
            } else {
                let mut out = std::io::stdout().lock();
                let _ = output::render(&mut out, &value, g.output, "BootTest");
                Err(Failure::Service(Error::new(
                    ErrorCode::BootTestFailed,
                    value["FailureReason"]
                        .as_str()
                        .unwrap_or("the boot test failed")
                        .to_string(),
                )))
            }
        }
        Command::Supervise { .. } | Command::ImdsRelay { .. } | Command::Serve(_) => {
            unreachable!("handled above")
        }
        Command::Baking(b) => baking::dispatch(b, &caller, open),
    }
}

/// Poll until the waiter's condition holds, as the aws CLI's waiters do.
fn wait(service: &mut Service, caller: &Caller, a: &WaitArgs) -> Result<(), Failure> {
    use crate::domain::{ImageStateName as Image, InstanceStateName as Instance};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(a.timeout);
    let interval = std::time::Duration::from_millis(500);
    // Each waiter's wanted state and the states it can never leave for it.
    let (want, hopeless): (Instance, &[Instance]) = match a.waiter.as_str() {
        "image-available" => {
            let read = |service: &mut Service| {
                let input = crate::service::images::DescribeImagesRequest {
                    image_ids: a.image_ids.clone(),
                    ..Default::default()
                };
                Ok(service
                    .describe_images(caller, input)?
                    .images
                    .into_iter()
                    .map(|i| (i.image_id, i.state))
                    .collect())
            };
            let outcome =
                service.wait_for_state(Image::Available, &[Image::Failed], deadline, interval, read);
            return waiter_result(a, outcome.map(drop));
        }
        "instance-running" => (
            Instance::Running,
            &[Instance::Terminated, Instance::ShuttingDown, Instance::Stopped, Instance::Stopping],
        ),
        "instance-stopped" => (
            Instance::Stopped,
            &[Instance::Terminated, Instance::ShuttingDown, Instance::Pending],
        ),
        "instance-terminated" => (Instance::Terminated, &[]),
        other => {
            return Err(Failure::Param(
                "waiter".into(),
                format!("unknown waiter {other}; use instance-running, instance-stopped, instance-terminated or image-available"),
            ))
        }
    };
    let read = |service: &mut Service| {
        let input = crate::service::instances::DescribeInstancesRequest {
            instance_ids: a.instance_ids.clone(),
            ..Default::default()
        };
        let v =
            serde_json::to_value(service.describe_instances(caller, input)?).expect("serializable");
        Ok(v["Reservations"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["Instances"].as_array().cloned().unwrap_or_default())
            .filter_map(|i| {
                let state = i["State"]["Name"].as_str()?.parse().ok()?;
                Some((
                    i["InstanceId"].as_str().unwrap_or_default().to_string(),
                    state,
                ))
            })
            .collect())
    };
    let outcome = service.wait_for_state(want, hopeless, deadline, interval, read);
    waiter_result(a, outcome.map(drop))
}

/// A waiter's outcome as the aws CLI reports it.
fn waiter_result<S: std::fmt::Display>(
    a: &WaitArgs,
    outcome: Result<(), crate::service::instances::WaitFailure<S>>,
) -> Result<(), Failure> {
    use crate::service::instances::WaitFailure;
    match outcome {
        Ok(()) => Ok(()),
        Err(WaitFailure::Error(e)) => Err(e.into()),
        // A state the waiter can never leave for the wanted one is a failure, as in the aws CLI.
        Err(WaitFailure::Hopeless { id, state }) => Err(Failure::Service(Error::new(
            ErrorCode::WaiterFailed,
            format!("Waiter {} failed: {id} is {state}", a.waiter),
        ))),
        Err(WaitFailure::TimedOut { last }) => {
            let states: Vec<(String, String)> = last
                .into_iter()
                .map(|(id, s)| (id, s.to_string()))
                .collect();
            Err(Failure::Service(Error::new(
                ErrorCode::WaiterTimedOut,
                format!(
                    "Waiter {} timed out after {} s: {states:?}",
                    a.waiter, a.timeout
                ),
            )))
        }
    }
}

/// Replace this process with `ssh` to the instance's forwarded port.
fn ssh(
    target: &crate::service::instances::SshTarget,
    command: &[String],
) -> Result<Option<Value>, Failure> {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new("ssh");
    c.args(["-p", &target.port.to_string()]).args([
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
    ]);
    if let Some(k) = &target.identity_file {
        c.arg("-i").arg(k).args(["-o", "IdentitiesOnly=yes"]);
    }
    c.arg(format!("{}@127.0.0.1", target.user)).args(command);
    let e = c.exec();
    Err(Failure::Service(
        Error::new(
            ErrorCode::MissingDependency,
            "Cannot run ssh; install the Debian package openssh-client",
        )
        .with_source(e),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &str) -> Vec<String> {
        w.split(' ').map(String::from).collect()
    }

    #[test]
    fn the_verb_is_the_first_word_that_is_no_global_option() {
        let cmd = Cli::command();
        let named = |line: &str| named_verb(&cmd, &words(line));
        assert_eq!(
            named("amirun describe-images --owners self").as_deref(),
            Some("describe-images")
        );
        assert_eq!(
            named("amirun --region r --debug --output=text describe-images").as_deref(),
            Some("describe-images")
        );
        assert_eq!(
            named("amirun --catalog c.json run-instances").as_deref(),
            Some("run-instances")
        );
        assert_eq!(
            named("amirun help stop-instances").as_deref(),
            Some("stop-instances")
        );
        assert_eq!(named("amirun --help"), None);
    }

    #[test]
    fn unknown_options_are_listed_as_the_aws_cli_lists_them() {
        let (cmd, _) = command_line(Some("describe-images"));
        let sub = cmd.find_subcommand("describe-images").unwrap();
        let unknown = |args: &str| unknown_options(&cmd, sub, &words(args));
        assert!(
            unknown("--image-ids a b --filters Name=x,Values=y --dry-run --output json").is_empty()
        );
        assert_eq!(unknown("--foo bar --owners self"), words("--foo bar"));
        assert_eq!(unknown("--dry-run stray"), words("stray"));
        assert_eq!(unknown("--max-results 5 6"), words("6"));
        assert_eq!(unknown("--next-token=t x"), words("x"));
        assert_eq!(unknown("--no-dry-run --region r"), Vec::<String>::new());
    }
}
