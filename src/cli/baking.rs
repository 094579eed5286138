//! Baking verbs: `create-image`, `create-snapshot`, `copy-snapshot`,
//! `import-snapshot`, `export-image` and amirun's own `bake RECIPE`.
//! Translation only, like the rest of the CLI.

use super::{accel_arg, param, param_one, Failure};
use crate::service::baking::{CreateImageRequest, ExportImageInput, ImportSnapshotInput};
use crate::service::layers::{CopySnapshotRequest, CreateSnapshotRequest};
use crate::service::shapes::DiskContainer;
use crate::service::{Caller, Service};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::path::PathBuf;

/// The baking subcommands (flattened into the top-level command list).
#[derive(Subcommand, Debug)]
pub enum BakingCommand {
    /// Create an AMI from an EBS-backed instance (snapshots every EBS volume).
    CreateImage(CreateImageArgs),
    /// Snapshot one EBS volume (a qcow2 layer on what it was made from).
    CreateSnapshot(CreateSnapshotArgs),
    /// Copy a snapshot (as a layer, or --flatten into one standalone file).
    CopySnapshot(CopySnapshotArgs),
    /// Import a disk image (raw, vmdk, vhd, vhdx, qcow2; file or URL) as a snapshot.
    ImportSnapshot(ImportSnapshotArgs),
    /// Export an AMI's root disk to a local file (qcow2, raw, vmdk, vhd).
    ExportImage(ExportImageArgs),
    /// Bake a new AMI from a recipe file (amirun's own verb; see images/recipes/).
    Bake(BakeArgs),
}

#[derive(Args, Debug)]
pub struct CreateImageArgs {
    #[arg(long)]
    instance_id: String,
    #[arg(long)]
    name: String,
    #[arg(long)]
    description: Option<String>,
    /// Snapshot a running instance live (over QMP) instead of rebooting it.
    #[arg(long)]
    no_reboot: bool,
    /// Reboot a running instance around the snapshot (the default).
    #[arg(long, conflicts_with = "no_reboot")]
    reboot: bool,
    #[arg(long, num_args = 1..)]
    block_device_mappings: Vec<String>,
    #[arg(long, num_args = 1..)]
    tag_specifications: Vec<String>,
    /// Write each snapshot standalone instead of as a layer (amirun's own).
    #[arg(long)]
    flatten: bool,
}

#[derive(Args, Debug)]
pub struct CreateSnapshotArgs {
    #[arg(long)]
    volume_id: String,
    #[arg(long)]
    description: Option<String>,
    #[arg(long, num_args = 1..)]
    tag_specifications: Vec<String>,
    /// Write the snapshot standalone instead of as a layer (amirun's own).
    #[arg(long)]
    flatten: bool,
}

#[derive(Args, Debug)]
pub struct CopySnapshotArgs {
    #[arg(long)]
    source_snapshot_id: String,
    /// Defaults to the current region.
    #[arg(long)]
    source_region: Option<String>,
    #[arg(long)]
    description: Option<String>,
    #[arg(long, num_args = 1..)]
    tag_specifications: Vec<String>,
    /// Write the copy as one standalone qcow2 of the whole chain.
    #[arg(long)]
    flatten: bool,
}

#[derive(Args, Debug)]
pub struct ImportSnapshotArgs {
    /// Url=file:///…,Format=vmdk (shorthand or JSON).
    #[arg(long)]
    disk_container: String,
    #[arg(long)]
    description: Option<String>,
    #[arg(long, num_args = 1..)]
    tag_specifications: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExportImageArgs {
    #[arg(long)]
    image_id: String,
    /// VMDK, RAW, VHD or QCOW2.
    #[arg(long)]
    disk_image_format: String,
    /// The file to write (amirun's stand-in for the S3 location; `--output`
    /// is the global output format).
    #[arg(long)]
    output_file: PathBuf,
    #[arg(long)]
    description: Option<String>,
}

#[derive(Args, Debug)]
pub struct BakeArgs {
    /// The recipe file (JSON).
    recipe: PathBuf,
    /// auto, kvm or tcg.
    #[arg(long, env = "AMIRUN_ACCEL", default_value = "auto")]
    accel: String,
}

/// Run one baking command.
pub(super) fn dispatch(
    command: &BakingCommand,
    caller: &Caller,
    open: impl FnOnce() -> crate::service::Result<Service>,
) -> Result<Option<Value>, Failure> {
    let v = match command {
        BakingCommand::CreateImage(a) => {
            let input = CreateImageRequest {
                instance_id: a.instance_id.clone(),
                name: a.name.clone(),
                description: a.description.clone(),
                no_reboot: Some(a.no_reboot),
                block_device_mappings: param("block-device-mappings", &a.block_device_mappings)?,
                tag_specifications: param("tag-specifications", &a.tag_specifications)?,
                flatten: a.flatten,
            };
            serde_json::to_value(open()?.create_image(caller, input)?).expect("serializable")
        }
        BakingCommand::CreateSnapshot(a) => {
            let input = CreateSnapshotRequest {
                volume_id: a.volume_id.clone(),
                description: a.description.clone(),
                tag_specifications: param("tag-specifications", &a.tag_specifications)?,
                flatten: a.flatten,
            };
            serde_json::to_value(open()?.create_snapshot(caller, input)?).expect("serializable")
        }
        BakingCommand::CopySnapshot(a) => {
            let input = CopySnapshotRequest {
                source_snapshot_id: a.source_snapshot_id.clone(),
                source_region: a.source_region.clone(),
                description: a.description.clone(),
                tag_specifications: param("tag-specifications", &a.tag_specifications)?,
                flatten: a.flatten,
                ..Default::default()
            };
            serde_json::to_value(open()?.copy_snapshot(caller, input)?).expect("serializable")
        }
        BakingCommand::ImportSnapshot(a) => {
            let input = ImportSnapshotInput {
                disk_container: param_one::<DiskContainer>("disk-container", &a.disk_container)?,
                description: a.description.clone(),
                tag_specifications: param("tag-specifications", &a.tag_specifications)?,
            };
            open()?.import_snapshot(caller, &input)?
        }
        BakingCommand::ExportImage(a) => {
            let input = ExportImageInput {
                image_id: a.image_id.clone(),
                disk_image_format: a.disk_image_format.clone(),
                output: a.output_file.clone(),
                description: a.description.clone(),
            };
            open()?.export_image(caller, &input)?
        }
        BakingCommand::Bake(a) => {
            let out = open()?.bake(caller, &a.recipe, accel_arg(&a.accel)?)?;
            serde_json::to_value(out).expect("serializable")
        }
    };
    Ok(Some(v))
}
