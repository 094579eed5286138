//! The schema of the state database: one SQL batch per version, applied in
//! order by [`Store::open`](super::Store::open) inside one transaction, with
//! `PRAGMA user_version` recording how far a database has come. Append a
//! batch to change the schema; never edit one that has shipped.

/// One SQL batch per schema version; index 0 takes a database to version 1.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE images (
    image_id            TEXT PRIMARY KEY,
    region              TEXT NOT NULL,
    name                TEXT NOT NULL,
    description         TEXT,
    owner_id            TEXT NOT NULL,
    owner_alias         TEXT,
    architecture        TEXT NOT NULL,
    boot_mode           TEXT,
    root_device_type    TEXT NOT NULL,
    root_device_name    TEXT NOT NULL,
    virtualization_type TEXT NOT NULL,
    state               TEXT NOT NULL,
    state_reason        TEXT,
    creation_date       TEXT NOT NULL,
    public              INTEGER NOT NULL DEFAULT 0,
    image_location      TEXT,
    root_source         TEXT,
    root_blob           TEXT,
    kernel_source       TEXT,
    ramdisk_source      TEXT,
    kernel_cmdline      TEXT,
    source_image_id     TEXT,
    source_image_region TEXT,
    source_instance_id  TEXT,
    catalog_key         TEXT,
    block_device_mappings TEXT NOT NULL
);
CREATE INDEX images_by_region ON images(region);
CREATE UNIQUE INDEX images_by_catalog ON images(catalog_key, region) WHERE catalog_key IS NOT NULL;

CREATE TABLE image_snapshots (
    image_id    TEXT NOT NULL REFERENCES images(image_id) ON DELETE CASCADE,
    snapshot_id TEXT NOT NULL,
    PRIMARY KEY (image_id, snapshot_id)
);
CREATE INDEX image_snapshots_by_snapshot ON image_snapshots(snapshot_id);

CREATE TABLE launch_permissions (
    image_id TEXT NOT NULL REFERENCES images(image_id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL,
    PRIMARY KEY (image_id, user_id)
);

CREATE TABLE snapshots (
    snapshot_id        TEXT PRIMARY KEY,
    region             TEXT NOT NULL,
    owner_id           TEXT NOT NULL,
    owner_alias        TEXT,
    volume_id          TEXT,
    volume_size_gib    INTEGER NOT NULL,
    state              TEXT NOT NULL,
    description        TEXT,
    start_time         TEXT NOT NULL,
    source             TEXT,
    blob_sha256        TEXT,
    parent_snapshot_id TEXT,
    has_file           INTEGER NOT NULL DEFAULT 0,
    storage_bytes      INTEGER,
    catalog_key        TEXT
);
CREATE INDEX snapshots_by_region ON snapshots(region);

CREATE TABLE tags (
    resource_id TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (resource_id, key)
);

CREATE TABLE blobs (
    sha256        TEXT PRIMARY KEY,
    size          INTEGER NOT NULL,
    virtual_size  INTEGER NOT NULL,
    source_format TEXT NOT NULL,
    first_source  TEXT NOT NULL,
    created       TEXT NOT NULL
);

CREATE TABLE catalog_sync (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    fingerprint TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE instances (
    instance_id        TEXT PRIMARY KEY,
    region             TEXT NOT NULL,
    owner_id           TEXT NOT NULL,
    reservation_id     TEXT NOT NULL,
    image_id           TEXT NOT NULL,
    instance_type      TEXT NOT NULL,
    architecture       TEXT NOT NULL,
    boot_mode          TEXT NOT NULL,
    root_device_type   TEXT NOT NULL,
    root_device_name   TEXT NOT NULL,
    state              TEXT NOT NULL,
    state_reason       TEXT,
    state_transition_reason TEXT,
    launch_time        TEXT NOT NULL,
    key_name           TEXT,
    user_data          BLOB,
    shutdown_behavior  TEXT NOT NULL,
    accel              TEXT NOT NULL,
    accel_reason       TEXT NOT NULL,
    ssh_port           INTEGER,
    imds_port          INTEGER,
    launch_index       INTEGER NOT NULL,
    metadata_options   TEXT NOT NULL,
    devices            TEXT NOT NULL,
    updated            TEXT NOT NULL
);
CREATE INDEX instances_by_region ON instances(region);

CREATE TABLE volumes (
    volume_id             TEXT PRIMARY KEY,
    region                TEXT NOT NULL,
    owner_id              TEXT NOT NULL,
    size_gib              INTEGER NOT NULL,
    snapshot_id           TEXT,
    state                 TEXT NOT NULL,
    create_time           TEXT NOT NULL,
    availability_zone     TEXT NOT NULL,
    volume_type           TEXT NOT NULL,
    instance_id           TEXT,
    device                TEXT,
    attach_time           TEXT,
    delete_on_termination INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX volumes_by_region ON volumes(region);

CREATE TABLE key_pairs (
    key_pair_id  TEXT PRIMARY KEY,
    region       TEXT NOT NULL,
    owner_id     TEXT NOT NULL,
    key_name     TEXT NOT NULL,
    key_type     TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    public_key   TEXT NOT NULL,
    private_key  TEXT,
    create_time  TEXT NOT NULL,
    UNIQUE (region, owner_id, key_name)
);
"#,
    // 3: which snapshot layer an EBS volume's overlay sits on right now.
    // Taking a snapshot of a volume turns its current file into the
    // snapshot's layer and gives the volume a fresh overlay on top, so the
    // volume's base moves on while its EC2 `SnapshotId` stays the one it
    // was created from. A row overrides `volumes.snapshot_id`; a NULL base
    // means the overlay stands alone (or on a blob only).
    r#"
CREATE TABLE volume_bases (
    volume_id        TEXT PRIMARY KEY,
    base_snapshot_id TEXT
);
CREATE INDEX volume_bases_by_snapshot ON volume_bases(base_snapshot_id);
"#,
    // 4: the VPC model (VPCs, subnets, security groups, network interfaces).
    super::vpc::MIGRATION,
    // 5: hibernation (EC2's HibernationOptions, and the saved state a
    // hibernated instance resumes from), as JSON; NULL when not configured.
    r#"
ALTER TABLE instances ADD COLUMN hibernation TEXT;
"#,
    // 6: launch templates and their versions (`launch_templates`), and what
    // volumes need beyond their row (`volume_changes`): performance,
    // the last modification, attach/detach intents.
    r#"
CREATE TABLE launch_templates (
    launch_template_id TEXT PRIMARY KEY,
    region             TEXT NOT NULL,
    owner_id           TEXT NOT NULL,
    name               TEXT NOT NULL,
    create_time        TEXT NOT NULL,
    created_by         TEXT NOT NULL,
    default_version    INTEGER NOT NULL,
    latest_version     INTEGER NOT NULL,
    UNIQUE (region, owner_id, name)
);
CREATE TABLE launch_template_versions (
    launch_template_id TEXT NOT NULL REFERENCES launch_templates(launch_template_id) ON DELETE CASCADE,
    version            INTEGER NOT NULL,
    description        TEXT,
    create_time        TEXT NOT NULL,
    created_by         TEXT NOT NULL,
    data               TEXT NOT NULL,
    PRIMARY KEY (launch_template_id, version)
);
CREATE TABLE volume_performance (
    volume_id  TEXT PRIMARY KEY,
    iops       INTEGER,
    throughput INTEGER
);
CREATE TABLE volume_modifications (
    volume_id           TEXT PRIMARY KEY,
    state               TEXT NOT NULL,
    status_message      TEXT,
    original_size       INTEGER NOT NULL,
    target_size         INTEGER NOT NULL,
    original_type       TEXT NOT NULL,
    target_type         TEXT NOT NULL,
    original_iops       INTEGER,
    target_iops         INTEGER,
    original_throughput INTEGER,
    target_throughput   INTEGER,
    start_time          TEXT NOT NULL,
    end_time            TEXT
);
CREATE TABLE volume_attach_intents (
    volume_id   TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    device      TEXT NOT NULL,
    op          TEXT NOT NULL,
    delete_on_termination INTEGER NOT NULL,
    started     TEXT NOT NULL
);
"#,
    // 7: attributes EC2 keeps on instances and snapshots beyond their
    // records (`super::attributes`): instance attributes by EC2 name (JSON
    // value), and who may create volumes from a snapshot (`all` for the
    // public group). Rows go with their object.
    r#"
CREATE TABLE instance_attributes (
    instance_id TEXT NOT NULL,
    name        TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (instance_id, name)
);
CREATE TRIGGER instance_attributes_gone AFTER DELETE ON instances BEGIN
    DELETE FROM instance_attributes WHERE instance_id = OLD.instance_id;
END;
CREATE TABLE snapshot_volume_permissions (
    snapshot_id TEXT NOT NULL,
    grantee     TEXT NOT NULL,
    PRIMARY KEY (snapshot_id, grantee)
);
CREATE TRIGGER snapshot_volume_permissions_gone AFTER DELETE ON snapshots BEGIN
    DELETE FROM snapshot_volume_permissions WHERE snapshot_id = OLD.snapshot_id;
END;
"#,
    // 8: idempotency tokens (`ClientToken`) of requests whose result has
    // no id to derive from the token (a launch template's next version):
    // what the first request made and a fingerprint of its parameters.
    r#"
CREATE TABLE client_tokens (
    account     TEXT NOT NULL,
    region      TEXT NOT NULL,
    action      TEXT NOT NULL,
    token       TEXT NOT NULL,
    made        TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (account, region, action, token)
);
"#,
    // 9: what remote backends hold (`super::remote`): AMIs published to a
    // region's backend, and instances running there with their server ids.
    super::remote::MIGRATION,
];
