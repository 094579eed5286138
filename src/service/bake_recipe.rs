//! Bake recipes: `amirun bake RECIPE` turns a base AMI plus provisioning
//! into a new AMI, and recipes can build on each other's outputs.
//!
//! A recipe is a JSON file ([`RecipeConfig`]; `images/recipes/` has
//! examples). The bake runs these steps, each named in errors:
//!
//! 1. `resolve-base`: the base AMI by id, by name (the caller's newest AMI
//!    of that name, else the newest visible one), or `from_recipe`: the
//!    output of another recipe, baked first when no AMI has its name yet;
//! 2. `launch`: one instance, every EBS volume deleted on termination;
//!    the provisioning travels as user data: one `#!/bin/sh` script that
//!    writes the recipe's `files` (so images without sshd can be baked),
//!    then runs the recipe's `user_data`, and prints `amirun-bake:
//!    provisioned` or `amirun-bake: FAILED step …` on the console;
//! 3. `provision`: wait for one of those markers;
//! 4. `ssh:N`: the recipe's `ssh` steps, run in order over `amirun ssh`'s
//!    forward (the image needs sshd, and the recipe a `key_name`);
//! 5. `done-when`: `poweroff` (the script ends with `poweroff` and the
//!    guest stops), `console` (a regex), or `cloud-init` (cloud-init's
//!    "finished" line); then `stop` if the guest is still running;
//! 6. `create-image` from the stopped instance (an O(1) layer per volume),
//!    with the recipe's name, description and tags, then
//!    `launch-permissions`;
//! 7. `terminate` the instance (its volumes go with it).
//!
//! A failed bake terminates the instance, deletes the AMI if one was made,
//! and fails with `BakeFailed` naming the step, with the console's tail.

use super::baking::CreateImageRequest;
use super::images::{
    DeregisterImageRequest, DescribeImagesRequest, LaunchPermission, LaunchPermissionModifications,
    ModifyImageAttributeRequest,
};
use super::instances::{RunInstancesRequest, StopInstancesRequest, WaitFailure};
use super::shapes::{Filter, Tag, TagSpecification};
use super::{Caller, Error, ErrorCode, Result, Service};
use crate::domain::{InstanceStateName, ShutdownBehavior};
use crate::machine::AccelRequest;
use crate::store::{BlockDeviceMapping, EbsBlockDevice};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A recipe as written in its JSON file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RecipeConfig {
    /// Name of the new AMI.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The AMI to start from.
    pub base: BaseConfig,
    #[serde(default)]
    pub instance_type: Option<String>,
    /// A script (`#!…`) run as root on first boot.
    #[serde(default)]
    pub user_data: Option<String>,
    /// The same, read from a file (relative to the recipe).
    #[serde(default)]
    pub user_data_file: Option<PathBuf>,
    /// Files written into the guest before the script runs.
    #[serde(default)]
    pub files: Vec<FileConfig>,
    /// Shell commands run over ssh, in order (needs sshd and `key_name`).
    #[serde(default)]
    pub ssh: Vec<String>,
    #[serde(default)]
    pub key_name: Option<String>,
    /// Login user for the ssh steps (default: the image vendor's).
    #[serde(default)]
    pub ssh_user: Option<String>,
    /// When provisioning is over.
    #[serde(default)]
    pub done_when: DoneWhen,
    /// Seconds the whole bake may take (default 900).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub launch_permissions: LaunchPermissionsConfig,
}

/// Where the bake starts from: exactly one of the three.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BaseConfig {
    #[serde(default)]
    pub image_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// Another recipe file (relative to this one): its output AMI.
    #[serde(default)]
    pub from_recipe: Option<PathBuf>,
}

/// A file to put into the guest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Absolute path in the guest.
    pub path: String,
    /// UTF-8 text content …
    #[serde(default)]
    pub content: Option<String>,
    /// … or a host file (relative to the recipe), UTF-8 text.
    #[serde(default)]
    pub source: Option<PathBuf>,
    /// Octal mode, e.g. `0644`.
    #[serde(default)]
    pub mode: Option<String>,
}

/// How the bake knows provisioning is over.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum DoneWhen {
    /// The guest powers itself off (the generated script ends with `poweroff`).
    #[default]
    Poweroff,
    /// A console line matches this regex.
    Console(String),
    /// cloud-init prints that it finished.
    CloudInit,
}

/// Who may launch the new AMI.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LaunchPermissionsConfig {
    /// 12-digit account ids.
    #[serde(default)]
    pub users: Vec<String>,
    /// Public (`Group=all`).
    #[serde(default)]
    pub public: bool,
}

/// A recipe checked and with its files read: what the bake runs.
#[derive(Debug, Clone)]
pub struct RecipeSpec {
    pub config: RecipeConfig,
    /// Where the recipe file is (relative paths resolve against its directory).
    pub path: PathBuf,
    pub user_data: Option<String>,
    /// (guest path, content, mode)
    pub files: Vec<(String, String, Option<String>)>,
    pub done: DoneRule,
}

/// A checked `done_when`.
#[derive(Debug, Clone)]
pub enum DoneRule {
    Poweroff,
    Console(Regex),
}

/// The console marker a successful provisioning script prints.
pub const PROVISIONED: &str = "amirun-bake: provisioned";
/// The console marker a failed step prints (`… FAILED step NAME exit N`).
pub const FAILED: &str = "amirun-bake: FAILED step";

/// What `bake` returns.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct BakeOutput {
    pub image_id: String,
    pub name: String,
    pub base_image_id: String,
    pub instance_id: String,
    pub seconds: f64,
    /// Seconds each step took, in order.
    pub steps: Vec<(String, f64)>,
    /// AMIs baked first for `from_recipe` bases.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub baked_bases: Vec<String>,
}

fn recipe_error(path: &Path, message: impl Into<String>) -> Error {
    Error::new(
        ErrorCode::InvalidRecipe,
        format!("Recipe {}: {}", path.display(), message.into()),
    )
}

impl RecipeSpec {
    /// Read, parse and check a recipe file.
    pub fn load(path: &Path) -> Result<RecipeSpec> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(
                ErrorCode::InvalidRecipe,
                format!("Cannot read recipe {}", path.display()),
            )
            .with_source(e)
        })?;
        let config: RecipeConfig = serde_json::from_str(&text).map_err(|e| {
            Error::new(
                ErrorCode::InvalidRecipe,
                format!("Recipe {} is not valid", path.display()),
            )
            .with_source(e)
        })?;
        Self::validate(config, path)
    }

    /// Semantic checks, and reading the files the recipe names.
    pub fn validate(config: RecipeConfig, path: &Path) -> Result<RecipeSpec> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let b = &config.base;
        let bases = [
            b.image_id.is_some(),
            b.name.is_some(),
            b.from_recipe.is_some(),
        ];
        if bases.iter().filter(|x| **x).count() != 1 {
            return Err(recipe_error(
                path,
                "base must give exactly one of image_id, name, from_recipe",
            ));
        }
        super::images::check_name(&config.name)?;
        let user_data = match (&config.user_data, &config.user_data_file) {
            (Some(_), Some(_)) => {
                return Err(recipe_error(
                    path,
                    "give user_data or user_data_file, not both",
                ))
            }
            (Some(u), None) => Some(u.clone()),
            (None, Some(f)) => Some(std::fs::read_to_string(dir.join(f)).map_err(|e| {
                recipe_error(path, format!("cannot read user_data_file {}", f.display()))
                    .with_source(e)
            })?),
            (None, None) => None,
        };
        if let Some(u) = &user_data {
            if !u.starts_with("#!") {
                return Err(recipe_error(
                    path,
                    "user_data must be a script starting with #!",
                ));
            }
        }
        let mut files = Vec::new();
        for f in &config.files {
            if !f.path.starts_with('/') {
                return Err(recipe_error(
                    path,
                    format!("file path {} is not absolute", f.path),
                ));
            }
            if let Some(m) = &f.mode {
                if m.is_empty() || m.len() > 4 || !m.bytes().all(|c| (b'0'..=b'7').contains(&c)) {
                    return Err(recipe_error(
                        path,
                        format!("mode {m} of {} is not octal", f.path),
                    ));
                }
            }
            let content = match (&f.content, &f.source) {
                (Some(c), None) => c.clone(),
                (None, Some(s)) => std::fs::read_to_string(dir.join(s)).map_err(|e| {
                    recipe_error(path, format!("cannot read file source {}", s.display()))
                        .with_source(e)
                })?,
                _ => {
                    return Err(recipe_error(
                        path,
                        format!("file {} needs exactly one of content, source", f.path),
                    ))
                }
            };
            files.push((f.path.clone(), content, f.mode.clone()));
        }
        if !config.ssh.is_empty() && config.key_name.is_none() {
            return Err(recipe_error(path, "ssh steps need a key_name"));
        }
        let done = match &config.done_when {
            DoneWhen::Poweroff => DoneRule::Poweroff,
            DoneWhen::Console(re) => DoneRule::Console(Regex::new(re).map_err(|e| {
                recipe_error(path, format!("done_when console regex {re} is invalid"))
                    .with_source(e)
            })?),
            DoneWhen::CloudInit => {
                DoneRule::Console(Regex::new(r"Cloud-init v\. \S+ finished").expect("valid regex"))
            }
        };
        for u in &config.launch_permissions.users {
            if !crate::domain::AccountId::is_valid(u) {
                return Err(recipe_error(
                    path,
                    format!("launch permission user {u} is not a 12-digit account id"),
                ));
            }
        }
        Ok(RecipeSpec {
            path: path.to_owned(),
            config,
            user_data,
            files,
            done,
        })
    }

    /// The one user-data script the guest runs (see the module doc).
    pub fn provisioning_script(&self) -> String {
        let mut s = String::from("#!/bin/sh\n# amirun bake: provisioning\n");
        s.push_str(&format!(
            "fail() {{ echo \"{FAILED} $1 exit $2\"; sync; exit 1; }}\n"
        ));
        for (i, (path, content, mode)) in self.files.iter().enumerate() {
            let step = format!("file:{}", i + 1);
            let dir = Path::new(path)
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "/".into());
            s.push_str(&format!(
                "mkdir -p {} && printf '%s' {} > {} || fail {step} $?\n",
                quote(&dir),
                quote(content),
                quote(path)
            ));
            if let Some(m) = mode {
                s.push_str(&format!("chmod {m} {} || fail {step} $?\n", quote(path)));
            }
        }
        if let Some(u) = &self.user_data {
            s.push_str(&format!(
                "printf '%s' {} > /tmp/amirun-bake-user-data && chmod 700 /tmp/amirun-bake-user-data || fail user-data $?\n\
                 /tmp/amirun-bake-user-data; rc=$?\n[ $rc -eq 0 ] || fail user-data $rc\n",
                quote(u)
            ));
        }
        s.push_str(&format!("sync\necho \"{PROVISIONED}\"\n"));
        if matches!(self.done, DoneRule::Poweroff) && self.config.ssh.is_empty() {
            s.push_str("poweroff\n");
        }
        s
    }
}

/// Single-quote for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Where a bake is, for errors.
struct Bake<'a> {
    step: &'static str,
    detail: String,
    started: Instant,
    step_started: Instant,
    steps: Vec<(String, f64)>,
    recipe: &'a RecipeSpec,
}

impl Bake<'_> {
    fn enter(&mut self, step: &'static str, detail: impl Into<String>) {
        self.close();
        self.step = step;
        self.detail = detail.into();
        self.step_started = Instant::now();
    }
    fn close(&mut self) {
        if !self.step.is_empty() {
            let name = if self.detail.is_empty() {
                self.step.to_string()
            } else {
                format!("{}:{}", self.step, self.detail)
            };
            self.steps
                .push((name, self.step_started.elapsed().as_secs_f64()));
        }
    }
    fn step_name(&self) -> String {
        if self.detail.is_empty() {
            self.step.to_string()
        } else {
            format!("{}:{}", self.step, self.detail)
        }
    }
}

impl Service {
    /// `amirun bake RECIPE`: see the module doc.
    pub fn bake(
        &mut self,
        caller: &Caller,
        recipe_path: &Path,
        accel: AccelRequest,
    ) -> Result<BakeOutput> {
        self.bake_depth(caller, recipe_path, accel, 0)
    }

    fn bake_depth(
        &mut self,
        caller: &Caller,
        recipe_path: &Path,
        accel: AccelRequest,
        depth: usize,
    ) -> Result<BakeOutput> {
        if depth > 16 {
            return Err(recipe_error(
                recipe_path,
                "from_recipe chain is deeper than 16 (a loop?)",
            ));
        }
        let recipe = RecipeSpec::load(recipe_path)?;
        let mut b = Bake {
            step: "",
            detail: String::new(),
            started: Instant::now(),
            step_started: Instant::now(),
            steps: Vec::new(),
            recipe: &recipe,
        };
        if self
            .image_named(caller, &recipe.config.name, true)?
            .is_some()
        {
            return Err(Error::new(
                ErrorCode::InvalidAmiNameDuplicate,
                format!(
                    "AMI name {} is already in use; deregister it or rename the recipe {}",
                    recipe.config.name,
                    recipe_path.display()
                ),
            ));
        }
        b.enter("resolve-base", "");
        let mut baked_bases = Vec::new();
        let base_id = {
            let base = &recipe.config.base;
            if let Some(id) = &base.image_id {
                self.launchable_image(caller, id)?.image_id
            } else if let Some(name) = &base.name {
                self.image_named(caller, name, false)?.ok_or_else(|| {
                    Error::new(
                        ErrorCode::InvalidAmiIdNotFound,
                        format!("No AMI named {name} is visible"),
                    )
                })?
            } else {
                let other = recipe_path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(base.from_recipe.as_ref().expect("validated"));
                let other_name = RecipeSpec::load(&other)?.config.name;
                match self.image_named(caller, &other_name, true)? {
                    Some(id) => id,
                    None => {
                        let out = self.bake_depth(caller, &other, accel, depth + 1)?;
                        baked_bases.extend(out.baked_bases);
                        baked_bases.push(out.image_id.clone());
                        out.image_id
                    }
                }
            }
        };
        let base = self.launchable_image(caller, &base_id)?;
        b.enter("launch", "");
        // Every volume goes on termination, so a failed bake leaves none.
        let mappings: Vec<BlockDeviceMapping> = base
            .block_device_mappings
            .iter()
            .filter(|m| m.ebs.is_some())
            .map(|m| BlockDeviceMapping {
                device_name: m.device_name.clone(),
                ebs: Some(EbsBlockDevice {
                    delete_on_termination: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        self.set_launch_accel(accel);
        let reservation = self.run_instances(
            caller,
            RunInstancesRequest {
                image_id: base_id.clone(),
                instance_type: recipe.config.instance_type.clone(),
                min_count: 1,
                max_count: 1,
                key_name: recipe.config.key_name.clone(),
                user_data: Some(recipe.provisioning_script().into_bytes().into()),
                block_device_mappings: mappings,
                instance_initiated_shutdown_behavior: Some(ShutdownBehavior::Stop),
                tag_specifications: vec![TagSpecification {
                    resource_type: "instance".into(),
                    tags: vec![Tag {
                        key: "amirun:bake".into(),
                        value: Some(recipe.config.name.clone()),
                    }],
                }],
                ..Default::default()
            },
        )?;
        let instance_id = reservation.instances[0].instance_id.clone();
        let mut made_image = None;
        let result = self.bake_instance(caller, &mut b, &instance_id, &base, &mut made_image);
        match result {
            Ok(image_id) => {
                b.enter("terminate", "");
                self.terminate_now(caller, &instance_id)?;
                b.close();
                Ok(BakeOutput {
                    image_id,
                    name: recipe.config.name.clone(),
                    base_image_id: base_id,
                    instance_id,
                    seconds: b.started.elapsed().as_secs_f64(),
                    steps: b.steps,
                    baked_bases,
                })
            }
            Err(e) => {
                let tail = self
                    .console_bytes(caller, &instance_id)
                    .map(|bytes| console_tail(&bytes, 25))
                    .unwrap_or_default();
                let _ = self.terminate_now(caller, &instance_id);
                if let Some(image_id) = made_image {
                    let _ = self.deregister_image(
                        caller,
                        DeregisterImageRequest {
                            image_id,
                            delete_associated_snapshots: Some(true),
                        },
                    );
                }
                Err(Error::new(
                    ErrorCode::BakeFailed,
                    format!(
                        "Bake of {} ({}) failed at step {} on {instance_id}: {}: {}\nconsole tail:\n{tail}",
                        recipe.config.name,
                        recipe_path.display(),
                        b.step_name(),
                        e.code(),
                        e.message()
                    ),
                )
                .with_source(e))
            }
        }
    }

    /// Steps 3-6 on a launched instance; returns the new AMI.
    fn bake_instance(
        &mut self,
        caller: &Caller,
        b: &mut Bake,
        id: &str,
        base: &crate::store::ImageState,
        made_image: &mut Option<String>,
    ) -> Result<String> {
        let recipe = b.recipe;
        let deadline = b.started + Duration::from_secs(recipe.config.timeout_secs.unwrap_or(900));
        b.enter("provision", "");
        self.wait_console(
            caller,
            id,
            deadline,
            |text| {
                if let Some(line) = text.lines().find(|l| l.contains(FAILED)) {
                    return Some(Err(line.trim().to_string()));
                }
                text.contains(PROVISIONED).then_some(Ok(()))
            },
            false,
        )?;
        for (n, step) in recipe.config.ssh.iter().enumerate() {
            b.enter("ssh", (n + 1).to_string());
            self.ssh_step(
                caller,
                id,
                recipe.config.ssh_user.as_deref(),
                step,
                deadline,
            )?;
        }
        b.enter("done-when", "");
        match &recipe.done {
            DoneRule::Poweroff if recipe.config.ssh.is_empty() => {
                self.wait_state(caller, id, InstanceStateName::Stopped, deadline)?;
            }
            DoneRule::Poweroff => {}
            DoneRule::Console(re) => {
                let re = re.clone();
                self.wait_console(
                    caller,
                    id,
                    deadline,
                    move |text| re.is_match(text).then_some(Ok(())),
                    false,
                )?;
            }
        }
        b.enter("stop", "");
        if self.instance_state(caller, id)? != InstanceStateName::Stopped {
            self.stop_instances(
                caller,
                StopInstancesRequest {
                    instance_ids: vec![id.to_string()],
                    force: None,
                    hibernate: None,
                },
            )?;
            self.wait_state(caller, id, InstanceStateName::Stopped, deadline)?;
        }
        b.enter("create-image", "");
        let i = self
            .store
            .read(|db| db.instance(id))?
            .ok_or_else(|| Error::internal(format!("Instance {id} is gone")))?;
        // Give the AMI the base's DeleteOnTermination, not the bake's.
        let keep: Vec<BlockDeviceMapping> = i
            .devices
            .iter()
            .filter(|d| d.volume_id.is_some())
            .map(|d| BlockDeviceMapping {
                device_name: d.device_name.clone(),
                ebs: Some(EbsBlockDevice {
                    delete_on_termination: Some(
                        base.block_device_mappings
                            .iter()
                            .find(|m| m.device_name == d.device_name)
                            .and_then(|m| m.ebs.as_ref())
                            .and_then(|e| e.delete_on_termination)
                            .unwrap_or(true),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let tags: Vec<Tag> = recipe
            .config
            .tags
            .iter()
            .map(|(k, v)| Tag {
                key: k.clone(),
                value: Some(v.clone()),
            })
            .collect();
        let out = self.create_image(
            caller,
            CreateImageRequest {
                instance_id: id.to_string(),
                name: recipe.config.name.clone(),
                description: recipe.config.description.clone(),
                no_reboot: None,
                block_device_mappings: keep,
                tag_specifications: if tags.is_empty() {
                    Vec::new()
                } else {
                    vec![
                        TagSpecification {
                            resource_type: "image".into(),
                            tags: tags.clone(),
                        },
                        TagSpecification {
                            resource_type: "snapshot".into(),
                            tags,
                        },
                    ]
                },
                flatten: false,
            },
        )?;
        *made_image = Some(out.image_id.clone());
        let lp = &recipe.config.launch_permissions;
        if lp.public || !lp.users.is_empty() {
            b.enter("launch-permissions", "");
            let mut add: Vec<LaunchPermission> = lp
                .users
                .iter()
                .map(|u| LaunchPermission {
                    user_id: Some(u.clone()),
                    group: None,
                })
                .collect();
            if lp.public {
                add.push(LaunchPermission {
                    user_id: None,
                    group: Some("all".into()),
                });
            }
            self.modify_image_attribute(
                caller,
                ModifyImageAttributeRequest {
                    image_id: out.image_id.clone(),
                    attribute: Some("launchPermission".into()),
                    operation_type: None,
                    user_ids: Vec::new(),
                    user_groups: Vec::new(),
                    launch_permission: Some(LaunchPermissionModifications {
                        add,
                        remove: Vec::new(),
                    }),
                    description: None,
                    value: None,
                },
            )?;
        }
        Ok(out.image_id)
    }

    /// The newest AMI with this exact name: the caller's own (with
    /// `own_only`), else any visible one.
    fn image_named(
        &mut self,
        caller: &Caller,
        name: &str,
        own_only: bool,
    ) -> Result<Option<String>> {
        let filters = vec![Filter {
            name: "name".into(),
            values: vec![name.to_string()],
        }];
        let mut images = self
            .describe_images(
                caller,
                DescribeImagesRequest {
                    filters,
                    ..Default::default()
                },
            )?
            .images;
        images.sort_by(|a, b| b.creation_date.cmp(&a.creation_date));
        let own = images.iter().find(|i| i.owner_id == caller.account);
        Ok(match own {
            Some(i) => Some(i.image_id.clone()),
            None if own_only => None,
            None => images.first().map(|i| i.image_id.clone()),
        })
    }

    fn instance_state(&mut self, caller: &Caller, id: &str) -> Result<InstanceStateName> {
        self.refresh_instances(caller)?;
        Ok(self
            .store
            .read(|db| db.instance(id))?
            .map(|i| i.state)
            .unwrap_or(InstanceStateName::Terminated))
    }

    fn wait_state(
        &mut self,
        caller: &Caller,
        id: &str,
        want: InstanceStateName,
        deadline: Instant,
    ) -> Result<()> {
        use InstanceStateName::{ShuttingDown, Terminated};
        let read = |svc: &mut Service| Ok(vec![(id.to_string(), svc.instance_state(caller, id)?)]);
        let interval = Duration::from_millis(250);
        match self.wait_for_state(want, &[Terminated, ShuttingDown], deadline, interval, read) {
            Ok(_) => Ok(()),
            Err(WaitFailure::Error(e)) => Err(e),
            Err(WaitFailure::Hopeless { state, .. }) => Err(Error::new(
                ErrorCode::IncorrectInstanceState,
                format!("The instance is {state}"),
            )),
            Err(WaitFailure::TimedOut { last }) => {
                let s = last.first().map_or(Terminated, |(_, s)| *s);
                Err(Error::new(
                    ErrorCode::Timeout,
                    format!("The instance did not become {want} in time (it is {s})"),
                ))
            }
        }
    }

    /// Poll the console until `check` decides (Ok: done; Err: the guest
    /// reported a failure); fails when the guest ends first (unless
    /// `stop_ok`) or at the deadline.
    fn wait_console(
        &mut self,
        caller: &Caller,
        id: &str,
        deadline: Instant,
        check: impl Fn(&str) -> Option<std::result::Result<(), String>>,
        stop_ok: bool,
    ) -> Result<()> {
        let mut last_state = Instant::now();
        loop {
            let text = String::from_utf8_lossy(&self.console_bytes(caller, id)?).into_owned();
            match check(&text) {
                Some(Ok(())) => return Ok(()),
                Some(Err(line)) => {
                    return Err(Error::new(
                        ErrorCode::ProvisioningFailed,
                        format!("The guest reported: {line}"),
                    ))
                }
                None => {}
            }
            if last_state.elapsed() > Duration::from_secs(1) {
                last_state = Instant::now();
                let s = self.instance_state(caller, id)?;
                if !stop_ok && (s == InstanceStateName::Stopped || s.is_terminating()) {
                    // One last look: the marker may have landed just before.
                    let text =
                        String::from_utf8_lossy(&self.console_bytes(caller, id)?).into_owned();
                    if let Some(r) = check(&text) {
                        return r.map_err(|line| {
                            Error::new(
                                ErrorCode::ProvisioningFailed,
                                format!("The guest reported: {line}"),
                            )
                        });
                    }
                    return Err(Error::incorrect_instance_state(format!(
                        "The guest ended ({s}) before it was done"
                    )));
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorCode::Timeout,
                    "The recipe's timeout passed",
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// One ssh step: wait for sshd, run the command, require exit 0.
    fn ssh_step(
        &mut self,
        caller: &Caller,
        id: &str,
        user: Option<&str>,
        command: &str,
        deadline: Instant,
    ) -> Result<()> {
        let target = self.ssh_target(caller, id, user)?;
        loop {
            let mut c = std::process::Command::new("ssh");
            c.args(["-p", &target.port.to_string()])
                .args([
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                ])
                .args([
                    "-o",
                    "LogLevel=ERROR",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "ConnectTimeout=5",
                ])
                .stdin(std::process::Stdio::null());
            if let Some(k) = &target.identity_file {
                c.arg("-i").arg(k).args(["-o", "IdentitiesOnly=yes"]);
            }
            c.arg(format!("{}@127.0.0.1", target.user)).arg(command);
            let out = c.output().map_err(|e| {
                Error::new(
                    ErrorCode::MissingDependency,
                    "Cannot run ssh; install openssh-client",
                )
                .with_source(e)
            })?;
            match out.status.code() {
                Some(0) => return Ok(()),
                // 255: ssh itself failed (sshd not up yet): try again.
                Some(255) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_secs(2));
                }
                code => {
                    return Err(Error::new(
                        ErrorCode::ProvisioningFailed,
                        format!(
                            "ssh step `{command}` exited {code:?}: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        ),
                    ))
                }
            }
        }
    }
}

/// The last `n` lines of a console log.
pub fn console_tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<RecipeSpec> {
        let config: RecipeConfig = serde_json::from_str(json).unwrap();
        RecipeSpec::validate(config, Path::new("/tmp/r.json"))
    }

    #[test]
    fn recipe_parses_and_builds_a_script() {
        let s = spec(
            r##"{"name":"web-000","base":{"name":"amirun/tiny-x86_64"},
                "user_data":"#!/bin/sh\necho it's here > /root/x\n",
                "files":[{"path":"/etc/motd","content":"hi 'there'\n","mode":"0644"}],
                "tags":{"role":"web"}}"##,
        )
        .unwrap();
        let script = s.provisioning_script();
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(
            script.contains("printf '%s' 'hi '\\''there'\\''\n' > '/etc/motd'"),
            "{script}"
        );
        assert!(script.contains("chmod 0644 '/etc/motd'"));
        assert!(script.contains(PROVISIONED));
        assert!(script.trim_end().ends_with("poweroff"));
    }

    #[test]
    fn recipe_checks_are_specific() {
        let e = spec(r#"{"name":"web-000","base":{}}"#).unwrap_err();
        assert!(e.message().contains("exactly one of"), "{e}");
        let e =
            spec(r#"{"name":"web-000","base":{"name":"x"},"user_data":"echo hi"}"#).unwrap_err();
        assert!(e.message().contains("#!"), "{e}");
        let e = spec(r#"{"name":"web-000","base":{"name":"x"},"done_when":{"console":"("}}"#)
            .unwrap_err();
        assert!(e.message().contains("regex"), "{e}");
        let e = spec(r#"{"name":"web-000","base":{"name":"x"},"ssh":["true"]}"#).unwrap_err();
        assert!(e.message().contains("key_name"), "{e}");
        assert!(
            serde_json::from_str::<RecipeConfig>(r#"{"name":"a","base":{},"bogus":1}"#).is_err()
        );
    }

    #[test]
    fn done_when_forms() {
        let s = spec(r#"{"name":"web-000","base":{"name":"x"},"done_when":"cloud-init"}"#).unwrap();
        assert!(
            matches!(s.done, DoneRule::Console(ref r) if r.is_match("Cloud-init v. 22.4.2 finished at x"))
        );
        let s = spec(r#"{"name":"web-000","base":{"name":"x"},"done_when":{"console":"ready$"}}"#)
            .unwrap();
        assert!(!s.provisioning_script().contains("poweroff"));
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(console_tail(b"a\nb\nc\n", 2), "b\nc");
    }
}
