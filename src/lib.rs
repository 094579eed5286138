//! amirun: a local EC2 for AMIs.
//!
//! A catalog of AMIs backed by real qcow2 disk images, booted as QEMU guests
//! with EC2's semantics, and baked into new AMIs by snapshotting disks. One
//! binary; state under one directory; no daemon: each running instance has
//! its own supervisor process (the same binary, `amirun __supervise`).
//!
//! Data flows one way: front ends -> service -> domain modules -> host tools.
//!
//! ```text
//! cli/   http/              translate input to service calls, render output
//!    \   /                  (http: SigV4, server limits, import policy forced)
//!    api/                   the contract: EC2 action -> service method (botocore's model)
//! service/                  one method per EC2 operation (images, snapshots, tags,
//!   |                       key pairs, instances, volumes, launch templates,
//!   |                       instance types, boot-test, VPCs + subnets + security
//!   |                       groups + network interfaces);
//!   |                       permissions, state rules, object locks, recovery + sweep
//!   +-- domain (EC2 enums, state machine, pure reconcile)   error_code
//!   +-- catalog   blobs   disk (qemu-img)   machine (QEMU argv)   metadata (seed, IMDS)
//!   +-- instance::supervisor (spawned detached; the only spawner of QEMU) + qmp
//!   |       +-- network (per-guest namespace + outbound leg, ssh relay; per-VPC network)
//!   +-- store (SQLite)      paths (every file name)      private_fs (modes)
//! ```
//!
//! - [`api`] is the contract both front ends speak: one table from EC2
//!   action to service method; every method takes botocore's typed request
//!   shape (unknown members refused, `DryRun` answered once in
//!   `api::invoke`) and returns its typed result shape; botocore's EC2
//!   model names and types them.
//! - [`cli`] makes one `aws ec2` verb per action of [`api`] from botocore's
//!   model (options, request, [`api::invoke`]), runs amirun's own verbs on
//!   [`service`], and renders results as `aws ec2` would (JSON, table,
//!   text, `--query`).
//! - [`service`] is the one door into the engine: one method per EC2
//!   operation; it checks permissions and state rules and is the only caller
//!   of the modules below. Each area keeps its operations' requests and
//!   results with it, in rooms: [`service::instances`] (launch, launch
//!   rules, boot, lifecycle, describe, volumes, reconcile),
//!   [`service::images`] (describe, import, copy, attributes),
//!   [`service::snapshots`], [`service::tags`]; [`service::shapes`] holds
//!   the shapes they share. Instance states shown to users are reconciled
//!   with live facts (supervisor and QEMU alive, exit records) on every read.
//!   Baking lives there too: [`service::layers`] keeps EBS snapshots as
//!   qcow2 layers (O(1) snapshots of stopped or live volumes, bounded
//!   chains, merge on delete, deferred while running volumes read the
//!   layer), [`service::baking`] makes AMIs from instances and moves images
//!   in and out, [`service::image_worker`] answers EC2's CreateImage at
//!   once and bakes in a detached `amirun __create-image` worker, and
//!   [`service::bake_recipe`] runs `amirun bake RECIPE`. Instance status
//!   checks ([`service::instance_status`]) come from live facts (supervisor,
//!   QEMU, the guest's console); instance and snapshot attributes have
//!   their own rooms. [`service::hibernation`] keeps EC2's
//!   hibernation rules: a guest stopped with `Hibernate` is saved next to
//!   its volumes and resumed on start while its volumes are unchanged.
//!   [`service::volumes`] gives EBS volumes a life of their own (create,
//!   attach to a running guest by hot-plug or to a stopped one, detach,
//!   grow online, delete) and [`service::launch_templates`] keeps numbered
//!   versions of launch parameters that RunInstances starts from.
//!   Operations that change files and records go lock -> intent -> act ->
//!   commit; a recovery pass at every open
//!   settles what a killed process left, from the real qcow2 chains, and
//!   sweeps files no record owns (`service::recovery`). One operation at a
//!   time per object: an `flock` per id (`service::object_lock`), held by
//!   whatever changes or makes the object and by reconciliation. Callers
//!   over HTTP name no host paths (`service::import_policy`).
//!   EC2's VPC model lives there as records ([`service::vpc`],
//!   [`service::security_groups`], [`service::network_interfaces`]): a
//!   default VPC per account and region made on first use, subnets,
//!   security groups and their rules, and one interface per instance with a
//!   private address from its subnet and a public (loopback) address; from
//!   them the service resolves each guest's [`network::VpcAttachment`] for
//!   the data plane at boot and after every rule or membership change.
//! - [`store`] is the only module that touches the database (SQLite, WAL,
//!   versioned migrations; multi-object changes are one transaction).
//! - [`catalog`] reads catalog files (`images/catalog.json`, `$AMIRUN_HOME/catalog.d`).
//! - [`blobs`] fetches and verifies disk images into the content-addressed
//!   blob store (AMI operations are [`service`]'s).
//! - [`disk`] is the only module that runs `qemu-img`.
//! - [`instance`] runs instances: the per-instance supervisor process that
//!   owns QEMU, its serial log and control socket, and the QMP client it
//!   talks to QEMU with; it also saves and loads a hibernated guest's
//!   state through QEMU's migration, and plugs volumes into and out of a
//!   running guest (`instance::hotplug`). The service starts supervisors from a `launch.json`
//!   and talks to them over their control socket; it never spawns QEMU.
//! - [`machine`] turns an instance spec into a QEMU argv (machine, CPU,
//!   firmware, devices, network, TCG's translation cache sized per guest,
//!   `-incoming` for a resume), holds the instance-type table, and chooses
//!   KVM or TCG by probing.
//! - [`http`] serves the EC2 Query API (`amirun serve`): it translates
//!   requests into the same [`service`] calls the CLI makes and renders
//!   EC2's XML.
//! - [`metadata`] makes the NoCloud seed (a FAT image labelled `cidata`)
//!   and answers IMDS for each guest from its supervisor (what it serves is
//!   gathered at boot by `service::imds_config`).
//! - [`network`] is the only module that touches host networking: a guest
//!   with outbound access runs in a network namespace of its own with an
//!   outbound leg (pasta) that cannot reach the host's own services; a
//!   guest in a VPC joins the VPC's network ([`network::vpc`]: namespace,
//!   bridge, taps, dnsmasq, nftables security groups, public-address and
//!   IMDS relays).
//! - [`backend`] is where instances run and image data live when a region
//!   is not this machine: a region bound in `$AMIRUN_HOME/regions.d` runs
//!   on a [`backend::Backend`] ([`backend::openstack`]: Glance images, Nova
//!   servers, image sharing as Glance members, snapshots); the service
//!   dispatches RunInstances, DescribeInstances,
//!   Stop/Start/Reboot/TerminateInstances, GetConsoleOutput and CreateImage
//!   of such a region there at the top of each method, and settles its
//!   images' states, launch permissions and deregistering there
//!   (`service::instances::remote` keeps EC2's ids, states and rules; the
//!   store maps ids to the backend's; each account may act in its own
//!   tenant). Local regions never reach it.
//! - [`openstack`] is a blocking client of the OpenStack APIs (Keystone v3,
//!   Glance v2, Nova) that [`backend::openstack`] speaks through.
//! - [`paths`] is the only module that knows file names on disk.
//! - [`domain`] holds EC2's closed sets as enums (instance, volume, image
//!   and snapshot states, root device type, shutdown behavior, boot mode,
//!   architecture, accelerator) with EC2's spellings, the instance state
//!   machine, and the pure `reconcile(recorded, live) -> Transition` the
//!   service applies on every read.
//! - [`ids`] makes and checks EC2-style ids.
//! - [`error_code`] names every error code (EC2's spelling) and its HTTP status.
//! - [`failpoint`] names crash points for fault-injection tests (`AMIRUN_FAILPOINTS`).
//! - [`private_fs`] keeps state private on disk (0700 directories, 0600
//!   secrets) and checks the runtime directory before use.

pub mod api;
pub mod backend;
pub mod blobs;
pub mod catalog;
pub mod cli;
pub mod disk;
pub mod domain;
pub mod error_code;
pub mod failpoint;
pub mod http;
pub mod ids;
pub mod instance;
pub mod machine;
pub mod metadata;
pub mod network;
pub mod openstack;
pub mod paths;
pub mod private_fs;
pub mod service;
pub mod store;
