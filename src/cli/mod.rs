//! The command line: `aws ec2`'s verbs, options and JSON shapes.
//!
//! This module only translates: it parses options (including the aws CLI's
//! shorthand and JSON forms, see [`shorthand`]) into service inputs, calls
//! [`crate::service::Service`], and renders the result with [`output`].
//! Errors print EC2's code, a one-line message and the cause chain, and exit
//! non-zero (254 for service errors, 252 for unparsable options, as the aws
//! CLI does).

pub mod baking;
pub mod output;
pub mod shorthand;

use crate::paths::Paths;
use crate::service::import_policy::ImportPolicy;
use crate::service::shapes::*;
use crate::service::{Caller, Error, ErrorCode, Service, ServiceOptions};
use clap::{Args, Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code for errors the service reported.
pub const EXIT_SERVICE_ERROR: u8 = 254;
/// Exit code for options that could not be parsed.
pub const EXIT_PARAM_ERROR: u8 = 252;

#[derive(Parser, Debug)]
#[command(
    name = "amirun",
    version,
    about = "A local EC2 for AMIs: run, bake and boot-test real images with aws ec2's verbs",
    after_help = "State lives in $AMIRUN_HOME (default ~/.local/share/amirun)."
)]
struct Cli {
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Describe the AMIs the account can see.
    DescribeImages(DescribeImagesArgs),
    /// Import a disk image (raw, vmdk, vhd, vhdx, qcow2) as a new private AMI.
    ImportImage(ImportImageArgs),
    /// Register an AMI from an image location or from snapshots.
    RegisterImage(RegisterImageArgs),
    /// Deregister an AMI (its snapshots are kept unless asked).
    DeregisterImage(DeregisterImageArgs),
    /// Copy an AMI from another region into this one.
    CopyImage(CopyImageArgs),
    /// Change an AMI's launch permissions or description.
    ModifyImageAttribute(ModifyImageAttributeArgs),
    /// Show one attribute of an AMI.
    DescribeImageAttribute(ImageAttributeArgs),
    /// Reset an AMI's launch permissions to private.
    ResetImageAttribute(ImageAttributeArgs),
    /// Describe EBS snapshots.
    DescribeSnapshots(DescribeSnapshotsArgs),
    /// Delete an EBS snapshot.
    DeleteSnapshot(DeleteSnapshotArgs),
    /// Add or overwrite tags on resources.
    CreateTags(TagsArgs),
    /// Delete tags from resources.
    DeleteTags(DeleteTagsArgs),
    /// Describe tags.
    DescribeTags(FiltersArgs),
    /// Download and verify an AMI's disks now instead of at first launch (amirun's own verb).
    FetchImage(FetchImageArgs),
    /// Launch instances of an AMI.
    RunInstances(RunInstancesArgs),
    /// Describe instances (states reconciled with the running guests).
    DescribeInstances(DescribeInstancesArgs),
    /// Start stopped EBS-backed instances.
    StartInstances(InstanceIdsArgs),
    /// Stop EBS-backed instances (ACPI power button; --force cuts power).
    StopInstances(StopInstancesArgs),
    /// Reboot instances.
    RebootInstances(InstanceIdsArgs),
    /// Terminate instances.
    TerminateInstances(InstanceIdsArgs),
    /// Print an instance's serial console.
    GetConsoleOutput(ConsoleArgs),
    /// Wait until instances or images reach a state.
    Wait(WaitArgs),
    /// Describe EBS volumes.
    DescribeVolumes(DescribeVolumesArgs),
    /// Describe regions.
    DescribeRegions(RegionNamesArgs),
    /// Describe the availability zones of the region.
    DescribeAvailabilityZones(ZoneNamesArgs),
    /// Describe instance types (vCPUs, memory, architectures, instance store).
    DescribeInstanceTypes(DescribeInstanceTypesArgs),
    /// List the instance types offered in the region or its zone.
    DescribeInstanceTypeOfferings(DescribeInstanceTypeOfferingsArgs),
    /// Print a UEFI instance's variable store (base64).
    GetInstanceUefiData(InstanceIdArgs),
    /// Describe the CPU credit option of burstable instances.
    DescribeInstanceCreditSpecifications(DescribeInstancesArgs),
    /// Create a key pair (amirun keeps the private key for `amirun ssh`).
    CreateKeyPair(CreateKeyPairArgs),
    /// Import an OpenSSH public key as a key pair.
    ImportKeyPair(ImportKeyPairArgs),
    /// Describe key pairs.
    DescribeKeyPairs(DescribeKeyPairsArgs),
    /// Delete a key pair.
    DeleteKeyPair(DeleteKeyPairArgs),
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
struct RunInstancesArgs {
    #[arg(long)]
    image_id: String,
    #[arg(long)]
    instance_type: Option<String>,
    #[arg(long, default_value_t = 1)]
    count: u32,
    #[arg(long)]
    min_count: Option<u32>,
    #[arg(long)]
    max_count: Option<u32>,
    #[arg(long)]
    key_name: Option<String>,
    /// Text, file://PATH or fileb://PATH.
    #[arg(long)]
    user_data: Option<String>,
    #[arg(long, num_args = 1..)]
    block_device_mappings: Vec<String>,
    /// stop or terminate.
    #[arg(long)]
    instance_initiated_shutdown_behavior: Option<String>,
    #[arg(long, num_args = 1..)]
    tag_specifications: Vec<String>,
    /// HttpTokens=required|optional,HttpEndpoint=enabled|disabled.
    #[arg(long)]
    metadata_options: Option<String>,
    /// Configured=true|false: enable the instance for hibernation.
    #[arg(long)]
    hibernation_options: Option<String>,
    /// auto, kvm or tcg.
    #[arg(long, env = "AMIRUN_ACCEL", default_value = "auto")]
    accel: String,
}

#[derive(Args, Debug)]
struct DescribeInstancesArgs {
    #[arg(long, num_args = 1..)]
    instance_ids: Vec<String>,
    #[arg(long, num_args = 1..)]
    filters: Vec<String>,
}

#[derive(Args, Debug)]
struct InstanceIdsArgs {
    #[arg(long, num_args = 1.., required = true)]
    instance_ids: Vec<String>,
}

#[derive(Args, Debug)]
struct StopInstancesArgs {
    #[arg(long, num_args = 1.., required = true)]
    instance_ids: Vec<String>,
    #[arg(long)]
    force: bool,
    /// Hibernate an instance launched with --hibernation-options Configured=true.
    #[arg(long)]
    hibernate: bool,
}

#[derive(Args, Debug)]
struct ConsoleArgs {
    #[arg(long)]
    instance_id: String,
    /// Only the most recent output (last 64 KiB).
    #[arg(long)]
    latest: bool,
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
struct DescribeVolumesArgs {
    #[arg(long, num_args = 1..)]
    volume_ids: Vec<String>,
    #[arg(long, num_args = 1..)]
    filters: Vec<String>,
}

#[derive(Args, Debug)]
struct RegionNamesArgs {
    #[arg(long, num_args = 1..)]
    region_names: Vec<String>,
    /// Accepted for compatibility: every region is enabled.
    #[arg(long)]
    all_regions: bool,
}

#[derive(Args, Debug)]
struct ZoneNamesArgs {
    #[arg(long, num_args = 1..)]
    zone_names: Vec<String>,
}

#[derive(Args, Debug)]
struct DescribeInstanceTypesArgs {
    #[arg(long, num_args = 1..)]
    instance_types: Vec<String>,
    #[arg(long, num_args = 1..)]
    filters: Vec<String>,
    #[arg(long)]
    max_results: Option<i64>,
    #[arg(long)]
    next_token: Option<String>,
}

#[derive(Args, Debug)]
struct DescribeInstanceTypeOfferingsArgs {
    /// region (default), availability-zone or availability-zone-id.
    #[arg(long)]
    location_type: Option<String>,
    #[arg(long, num_args = 1..)]
    filters: Vec<String>,
    #[arg(long)]
    max_results: Option<i64>,
    #[arg(long)]
    next_token: Option<String>,
}

#[derive(Args, Debug)]
struct InstanceIdArgs {
    #[arg(long)]
    instance_id: String,
}

#[derive(Args, Debug)]
struct CreateKeyPairArgs {
    #[arg(long)]
    key_name: String,
    /// rsa (default) or ed25519.
    #[arg(long)]
    key_type: Option<String>,
    #[arg(long, num_args = 1..)]
    tag_specifications: Vec<String>,
}

#[derive(Args, Debug)]
struct ImportKeyPairArgs {
    #[arg(long)]
    key_name: String,
    /// The public key (OpenSSH line, RFC 4716 block, PEM/DER RSA): text, file://PATH or fileb://PATH.
    #[arg(long)]
    public_key_material: String,
    #[arg(long, num_args = 1..)]
    tag_specifications: Vec<String>,
}

#[derive(Args, Debug)]
struct DescribeKeyPairsArgs {
    #[arg(long, num_args = 1..)]
    key_names: Vec<String>,
    #[arg(long, num_args = 1..)]
    key_pair_ids: Vec<String>,
    #[arg(long, num_args = 1..)]
    filters: Vec<String>,
    #[arg(long)]
    include_public_key: bool,
}

#[derive(Args, Debug)]
struct DeleteKeyPairArgs {
    #[arg(long)]
    key_name: String,
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
struct DescribeImagesArgs {
    #[arg(long, num_args = 1..)]
    image_ids: Vec<String>,
    /// self, amazon (or another alias), or account ids.
    #[arg(long, num_args = 1..)]
    owners: Vec<String>,
    /// self, all, or account ids.
    #[arg(long, num_args = 1..)]
    executable_users: Vec<String>,
    /// Name=…,Values=… (shorthand or JSON); repeatable.
    #[arg(long, num_args = 1..)]
    filters: Vec<String>,
}

#[derive(Args, Debug)]
struct ImportImageArgs {
    /// Url=file:///…,Format=raw (shorthand or JSON).
    #[arg(long, num_args = 1.., required = true)]
    disk_containers: Vec<String>,
    #[arg(long)]
    description: Option<String>,
    #[arg(long)]
    architecture: Option<String>,
    #[arg(long)]
    boot_mode: Option<String>,
    #[arg(long)]
    platform: Option<String>,
    #[arg(long, num_args = 1..)]
    tag_specifications: Vec<String>,
}

#[derive(Args, Debug)]
struct RegisterImageArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    description: Option<String>,
    #[arg(long)]
    architecture: Option<String>,
    /// URL of a disk image (file://, http://, https://): an instance-store AMI.
    #[arg(long)]
    image_location: Option<String>,
    #[arg(long)]
    root_device_name: Option<String>,
    /// DeviceName=…,Ebs={SnapshotId=…} (shorthand or JSON); repeatable.
    #[arg(long, num_args = 1..)]
    block_device_mappings: Vec<String>,
    #[arg(long)]
    boot_mode: Option<String>,
    #[arg(long)]
    virtualization_type: Option<String>,
    #[arg(long, num_args = 1..)]
    tag_specifications: Vec<String>,
}

#[derive(Args, Debug)]
struct DeregisterImageArgs {
    #[arg(long)]
    image_id: String,
    #[arg(long)]
    delete_associated_snapshots: bool,
}

#[derive(Args, Debug)]
struct CopyImageArgs {
    #[arg(long)]
    source_region: String,
    #[arg(long)]
    source_image_id: String,
    #[arg(long)]
    name: String,
    #[arg(long)]
    description: Option<String>,
    #[arg(long)]
    copy_image_tags: bool,
    #[arg(long, num_args = 1..)]
    tag_specifications: Vec<String>,
}

#[derive(Args, Debug)]
struct ModifyImageAttributeArgs {
    #[arg(long)]
    image_id: String,
    /// launchPermission or description.
    #[arg(long)]
    attribute: Option<String>,
    /// add or remove (with --user-ids / --user-groups).
    #[arg(long)]
    operation_type: Option<String>,
    #[arg(long, num_args = 1..)]
    user_ids: Vec<String>,
    #[arg(long, num_args = 1..)]
    user_groups: Vec<String>,
    /// Add=[{UserId=…},{Group=all}],Remove=[…] (shorthand or JSON).
    #[arg(long)]
    launch_permission: Option<String>,
    /// Value=… or plain text.
    #[arg(long)]
    description: Option<String>,
    #[arg(long)]
    value: Option<String>,
}

#[derive(Args, Debug)]
struct ImageAttributeArgs {
    #[arg(long)]
    image_id: String,
    #[arg(long)]
    attribute: String,
}

#[derive(Args, Debug)]
struct DescribeSnapshotsArgs {
    #[arg(long, num_args = 1..)]
    snapshot_ids: Vec<String>,
    #[arg(long, num_args = 1..)]
    owner_ids: Vec<String>,
    #[arg(long, num_args = 1..)]
    restorable_by_user_ids: Vec<String>,
    #[arg(long, num_args = 1..)]
    filters: Vec<String>,
}

#[derive(Args, Debug)]
struct DeleteSnapshotArgs {
    #[arg(long)]
    snapshot_id: String,
}

#[derive(Args, Debug)]
struct TagsArgs {
    #[arg(long, num_args = 1.., required = true)]
    resources: Vec<String>,
    /// Key=…,Value=… (shorthand or JSON); repeatable.
    #[arg(long, num_args = 1.., required = true)]
    tags: Vec<String>,
}

#[derive(Args, Debug)]
struct DeleteTagsArgs {
    #[arg(long, num_args = 1.., required = true)]
    resources: Vec<String>,
    #[arg(long, num_args = 1..)]
    tags: Vec<String>,
}

#[derive(Args, Debug)]
struct FiltersArgs {
    #[arg(long, num_args = 1..)]
    filters: Vec<String>,
}

#[derive(Args, Debug)]
struct FetchImageArgs {
    #[arg(long)]
    image_id: String,
}

/// A failure before or after the service was called.
enum Failure {
    /// An option could not be parsed.
    Param(String, String),
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

/// Run the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = if cli.debug {
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
    let (title, result) = run(&cli);
    match result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(value)) => match output::apply_query(value, cli.query.as_deref()) {
            Ok(v) => {
                let mut out = std::io::stdout().lock();
                if let Err(e) = output::render(&mut out, &v, cli.output, &title) {
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
        Err(Failure::Service(e)) => {
            eprintln!("{}", e.chain());
            ExitCode::from(EXIT_SERVICE_ERROR)
        }
    }
}

fn run(cli: &Cli) -> (String, Result<Option<Value>, Failure>) {
    let title = format!("{:?}", cli.command)
        .split('(')
        .next()
        .unwrap_or_default()
        .to_string();
    (title, dispatch(cli))
}

/// `--user-data` and friends: literal text, `file://PATH` (text) or `fileb://PATH`.
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

fn dispatch(cli: &Cli) -> Result<Option<Value>, Failure> {
    if let Command::ImdsRelay { socket } = &cli.command {
        // Nothing to say to the guest on failure: closing is the answer.
        let _ = crate::metadata::imds::relay(socket);
        return Ok(None);
    }
    if let Command::Serve(a) = &cli.command {
        Caller::new(cli.account.clone(), cli.region.clone())?;
        crate::http::serve(crate::http::ServeOptions {
            listen: a.listen,
            paths: Paths::from_env(),
            service: ServiceOptions {
                extra_catalogs: cli.catalog.clone(),
                progress: false,
                // `serve` replaces this with the remote policy in any case.
                import_policy: ImportPolicy::Remote {
                    import_dir: a.import_dir.clone(),
                },
                ..ServiceOptions::from_env()
            },
            default_region: cli.region.clone(),
            credentials: crate::http::Credentials {
                keys: a.access_keys.clone(),
                default_account: cli.account.clone(),
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
    if let Command::Supervise { launch_spec } = &cli.command {
        return match crate::instance::supervisor::run(launch_spec) {
            Ok(_) => Ok(None),
            Err(e) => Err(Failure::Service(e.into())),
        };
    }
    let caller = Caller::new(cli.account.clone(), cli.region.clone())?;
    let open = || {
        Service::open(
            Paths::from_env(),
            ServiceOptions {
                extra_catalogs: cli.catalog.clone(),
                progress: std::io::stderr().is_terminal(),
                // The CLI acts as the local user: any file:// URL.
                import_policy: ImportPolicy::LocalUser,
                ..ServiceOptions::from_env()
            },
        )
    };
    let to_value = |v: Value| Ok(Some(v));
    match &cli.command {
        Command::DescribeImages(a) => {
            let input = DescribeImagesInput {
                image_ids: a.image_ids.clone(),
                owners: a.owners.clone(),
                executable_users: a.executable_users.clone(),
                filters: param("filters", &a.filters)?,
            };
            let images = open()?.describe_images(&caller, &input)?;
            to_value(json!({ "Images": images }))
        }
        Command::ImportImage(a) => {
            let input = ImportImageInput {
                disk_containers: param("disk-containers", &a.disk_containers)?,
                description: a.description.clone(),
                architecture: a.architecture.clone(),
                boot_mode: a.boot_mode.clone(),
                platform: a.platform.clone(),
                tag_specifications: param("tag-specifications", &a.tag_specifications)?,
            };
            let out = open()?.import_image(&caller, &input)?;
            to_value(serde_json::to_value(out).expect("serializable"))
        }
        Command::RegisterImage(a) => {
            let input = RegisterImageInput {
                name: a.name.clone(),
                description: a.description.clone(),
                architecture: a.architecture.clone(),
                image_location: a.image_location.clone(),
                root_device_name: a.root_device_name.clone(),
                block_device_mappings: param("block-device-mappings", &a.block_device_mappings)?,
                boot_mode: a.boot_mode.clone(),
                virtualization_type: a.virtualization_type.clone(),
                tag_specifications: param("tag-specifications", &a.tag_specifications)?,
            };
            let id = open()?.register_image(&caller, &input)?;
            to_value(json!({ "ImageId": id }))
        }
        Command::DeregisterImage(a) => {
            let out =
                open()?.deregister_image(&caller, &a.image_id, a.delete_associated_snapshots)?;
            to_value(serde_json::to_value(out).expect("serializable"))
        }
        Command::CopyImage(a) => {
            let input = CopyImageInput {
                source_region: a.source_region.clone(),
                source_image_id: a.source_image_id.clone(),
                name: a.name.clone(),
                description: a.description.clone(),
                copy_image_tags: a.copy_image_tags,
                tag_specifications: param("tag-specifications", &a.tag_specifications)?,
            };
            let id = open()?.copy_image(&caller, &input)?;
            to_value(json!({ "ImageId": id }))
        }
        Command::ModifyImageAttribute(a) => {
            let description = a.description.as_ref().map(|d| {
                // aws takes `--description Value=text`; plain text works too.
                shorthand::parse(d)
                    .ok()
                    .and_then(|v| v.get("Value").and_then(|s| s.as_str().map(String::from)))
                    .unwrap_or_else(|| d.clone())
            });
            let input = ModifyImageAttributeInput {
                image_id: a.image_id.clone(),
                attribute: a.attribute.clone(),
                operation_type: a.operation_type.clone(),
                user_ids: a.user_ids.clone(),
                user_groups: a.user_groups.clone(),
                launch_permission: a
                    .launch_permission
                    .as_deref()
                    .map(|l| param_one("launch-permission", l))
                    .transpose()?,
                description,
                value: a.value.clone(),
            };
            open()?.modify_image_attribute(&caller, &input)?;
            Ok(None)
        }
        Command::DescribeImageAttribute(a) => {
            let out = open()?.describe_image_attribute(&caller, &a.image_id, &a.attribute)?;
            to_value(serde_json::to_value(out).expect("serializable"))
        }
        Command::ResetImageAttribute(a) => {
            open()?.reset_image_attribute(&caller, &a.image_id, &a.attribute)?;
            Ok(None)
        }
        Command::DescribeSnapshots(a) => {
            let input = DescribeSnapshotsInput {
                snapshot_ids: a.snapshot_ids.clone(),
                owner_ids: a.owner_ids.clone(),
                restorable_by_user_ids: a.restorable_by_user_ids.clone(),
                filters: param("filters", &a.filters)?,
            };
            let snaps = open()?.describe_snapshots(&caller, &input)?;
            to_value(json!({ "Snapshots": snaps }))
        }
        Command::DeleteSnapshot(a) => {
            open()?.delete_snapshot(&caller, &a.snapshot_id)?;
            Ok(None)
        }
        Command::CreateTags(a) => {
            let tags: Vec<Tag> = param("tags", &a.tags)?;
            open()?.create_tags(&caller, &a.resources, &tags)?;
            Ok(None)
        }
        Command::DeleteTags(a) => {
            let tags: Vec<Tag> = param("tags", &a.tags)?;
            open()?.delete_tags(&caller, &a.resources, &tags)?;
            Ok(None)
        }
        Command::DescribeTags(a) => {
            let filters = param("filters", &a.filters)?;
            let tags = open()?.describe_tags(&caller, &filters)?;
            to_value(json!({ "Tags": tags }))
        }
        Command::FetchImage(a) => {
            let disks = open()?.fetch_image(&caller, &a.image_id)?;
            to_value(json!({ "ImageId": a.image_id, "Disks": disks }))
        }
        Command::RunInstances(a) => {
            let input = crate::service::instances::RunInstancesInput {
                image_id: a.image_id.clone(),
                instance_type: a.instance_type.clone(),
                min_count: a.min_count.unwrap_or(a.count),
                // Only --min-count given: launch that many.
                max_count: a
                    .max_count
                    .unwrap_or(a.min_count.unwrap_or(a.count).max(a.count)),
                key_name: a.key_name.clone(),
                user_data: a
                    .user_data
                    .as_deref()
                    .map(|u| blob_arg("user-data", u))
                    .transpose()?,
                block_device_mappings: param("block-device-mappings", &a.block_device_mappings)?,
                shutdown_behavior: a.instance_initiated_shutdown_behavior.clone(),
                tag_specifications: param("tag-specifications", &a.tag_specifications)?,
                accel: accel_arg(&a.accel)?,
                metadata_options: a
                    .metadata_options
                    .as_deref()
                    .map(|m| param_one::<Value>("metadata-options", m))
                    .transpose()?,
                hibernation_options: a
                    .hibernation_options
                    .as_deref()
                    .map(|h| param_one("hibernation-options", h))
                    .transpose()?,
            };
            to_value(open()?.run_instances(&caller, &input)?)
        }
        Command::DescribeInstances(a) => {
            let filters: Vec<Filter> = param("filters", &a.filters)?;
            to_value(open()?.describe_instances(&caller, &a.instance_ids, &filters)?)
        }
        Command::StartInstances(a) => to_value(open()?.start_instances(&caller, &a.instance_ids)?),
        Command::StopInstances(a) => {
            to_value(open()?.stop_instances(&caller, &a.instance_ids, a.force, a.hibernate)?)
        }
        Command::RebootInstances(a) => {
            open()?.reboot_instances(&caller, &a.instance_ids)?;
            Ok(None)
        }
        Command::TerminateInstances(a) => {
            to_value(open()?.terminate_instances(&caller, &a.instance_ids)?)
        }
        Command::GetConsoleOutput(a) => {
            let out = open()?.get_console_output(&caller, &a.instance_id, a.latest)?;
            to_value(serde_json::to_value(out).expect("serializable"))
        }
        Command::Wait(a) => {
            wait(&mut open()?, &caller, a)?;
            Ok(None)
        }
        Command::DescribeVolumes(a) => {
            let filters: Vec<Filter> = param("filters", &a.filters)?;
            to_value(open()?.describe_volumes(&caller, &a.volume_ids, &filters)?)
        }
        Command::DescribeRegions(a) => {
            to_value(open()?.describe_regions(&caller, &a.region_names)?)
        }
        Command::DescribeAvailabilityZones(a) => {
            to_value(open()?.describe_availability_zones(&caller, &a.zone_names)?)
        }
        Command::DescribeInstanceTypes(a) => {
            let input = crate::service::instance_types::DescribeInstanceTypesInput {
                instance_types: a.instance_types.clone(),
                filters: param("filters", &a.filters)?,
                paging: crate::service::instance_types::Paging {
                    max_results: a.max_results,
                    next_token: a.next_token.clone(),
                },
            };
            to_value(open()?.describe_instance_types(&caller, &input)?)
        }
        Command::DescribeInstanceTypeOfferings(a) => {
            let input = crate::service::instance_types::DescribeInstanceTypeOfferingsInput {
                location_type: a.location_type.clone(),
                filters: param("filters", &a.filters)?,
                paging: crate::service::instance_types::Paging {
                    max_results: a.max_results,
                    next_token: a.next_token.clone(),
                },
            };
            to_value(open()?.describe_instance_type_offerings(&caller, &input)?)
        }
        Command::GetInstanceUefiData(a) => {
            to_value(open()?.get_instance_uefi_data(&caller, &a.instance_id)?)
        }
        Command::DescribeInstanceCreditSpecifications(a) => {
            let filters: Vec<Filter> = param("filters", &a.filters)?;
            to_value(open()?.describe_instance_credit_specifications(
                &caller,
                &a.instance_ids,
                &filters,
            )?)
        }
        Command::CreateKeyPair(a) => {
            let specs: Vec<TagSpecification> = param("tag-specifications", &a.tag_specifications)?;
            let out =
                open()?.create_key_pair(&caller, &a.key_name, a.key_type.as_deref(), &specs)?;
            to_value(serde_json::to_value(out).expect("serializable"))
        }
        Command::ImportKeyPair(a) => {
            let material = blob_arg("public-key-material", &a.public_key_material)?;
            let specs: Vec<TagSpecification> = param("tag-specifications", &a.tag_specifications)?;
            let out = open()?.import_key_pair(&caller, &a.key_name, &material, &specs)?;
            to_value(serde_json::to_value(out).expect("serializable"))
        }
        Command::DescribeKeyPairs(a) => {
            let input = crate::service::DescribeKeyPairsInput {
                key_names: a.key_names.clone(),
                key_pair_ids: a.key_pair_ids.clone(),
                filters: param("filters", &a.filters)?,
                include_public_key: a.include_public_key,
            };
            let out = open()?.describe_key_pairs(&caller, &input)?;
            to_value(json!({ "KeyPairs": out }))
        }
        Command::DeleteKeyPair(a) => {
            open()?.delete_key_pair(&caller, &a.key_name)?;
            to_value(json!({ "Return": true }))
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
                to_value(value)
            } else {
                let mut out = std::io::stdout().lock();
                let _ = output::render(&mut out, &value, cli.output, "BootTest");
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
                let input = DescribeImagesInput {
                    image_ids: a.image_ids.clone(),
                    ..Default::default()
                };
                Ok(service
                    .describe_images(caller, &input)?
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
        let v = service.describe_instances(caller, &a.instance_ids, &[])?;
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
