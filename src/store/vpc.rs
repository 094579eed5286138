//! The VPC model's records: VPCs, subnets, security groups and their rules,
//! and network interfaces (a guest's place in a subnet, its addresses and
//! groups). Kept apart from the rest of the store because nothing else
//! reads these tables; the service resolves them into
//! [`crate::network::VpcAttachment`]s for the data plane.
//!
//! Addresses are unique by construction: `(subnet_id, private_ip)`, `mac`
//! and `public_ip` carry unique indexes, so two processes allocating at
//! once cannot hand out one address twice (the loser's transaction fails
//! and nothing is half-made). One default VPC per account and region is an
//! index too (`vpcs_one_default`).

use super::{Db, Result};
use rusqlite::{params, OptionalExtension, Row};

/// A stored VPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpcState {
    pub vpc_id: String,
    pub region: String,
    pub owner_id: String,
    /// IPv4 block, e.g. `172.31.0.0/16`.
    pub cidr_block: String,
    pub is_default: bool,
    pub instance_tenancy: String,
    /// `igw-…` attached to it, if any (the default VPC has one).
    pub internet_gateway_id: Option<String>,
    /// `rtb-…` of its main route table.
    pub main_route_table_id: String,
    /// `sg-…` of its `default` group.
    pub default_group_id: String,
    pub created: String,
}

/// A stored subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetState {
    pub subnet_id: String,
    pub vpc_id: String,
    pub region: String,
    pub owner_id: String,
    pub cidr_block: String,
    pub availability_zone: String,
    pub default_for_az: bool,
    pub map_public_ip_on_launch: bool,
}

/// A stored security group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroupState {
    pub group_id: String,
    pub vpc_id: String,
    pub region: String,
    pub owner_id: String,
    pub group_name: String,
    pub description: String,
}

/// One stored rule of a security group: one peer (an IPv4 block or a group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroupRuleState {
    /// `sgr-…`
    pub rule_id: String,
    pub group_id: String,
    pub is_egress: bool,
    /// `tcp`, `udp`, `icmp` or `-1`.
    pub ip_protocol: String,
    /// `-1` for all (EC2 shows none for `-1` rules).
    pub from_port: Option<i64>,
    pub to_port: Option<i64>,
    pub cidr_ipv4: Option<String>,
    pub referenced_group_id: Option<String>,
    pub description: Option<String>,
}

/// A stored network interface (`eni-…`), attached to an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInterfaceState {
    pub network_interface_id: String,
    pub region: String,
    pub owner_id: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub availability_zone: String,
    pub private_ip: String,
    pub mac: String,
    /// The public (loopback) address while it has one.
    pub public_ip: Option<String>,
    /// Whether each start gives it a public address.
    pub wants_public_ip: bool,
    pub description: String,
    pub instance_id: Option<String>,
    /// `eni-attach-…`
    pub attachment_id: Option<String>,
    pub device_index: i64,
    pub attach_time: String,
    pub delete_on_termination: bool,
    /// Its security groups, in the order given.
    pub group_ids: Vec<String>,
}

/// The schema of this module (appended to [`super::MIGRATIONS`]).
pub const MIGRATION: &str = r#"
CREATE TABLE vpcs (
    vpc_id              TEXT PRIMARY KEY,
    region              TEXT NOT NULL,
    owner_id            TEXT NOT NULL,
    cidr_block          TEXT NOT NULL,
    is_default          INTEGER NOT NULL DEFAULT 0,
    instance_tenancy    TEXT NOT NULL,
    internet_gateway_id TEXT,
    main_route_table_id TEXT NOT NULL,
    default_group_id    TEXT NOT NULL,
    created             TEXT NOT NULL
);
CREATE INDEX vpcs_by_region ON vpcs(region, owner_id);
CREATE UNIQUE INDEX vpcs_one_default ON vpcs(region, owner_id) WHERE is_default = 1;

CREATE TABLE default_vpcs_made (
    region   TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    PRIMARY KEY (region, owner_id)
);

CREATE TABLE subnets (
    subnet_id         TEXT PRIMARY KEY,
    vpc_id            TEXT NOT NULL REFERENCES vpcs(vpc_id),
    region            TEXT NOT NULL,
    owner_id          TEXT NOT NULL,
    cidr_block        TEXT NOT NULL,
    availability_zone TEXT NOT NULL,
    default_for_az    INTEGER NOT NULL DEFAULT 0,
    map_public_ip     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX subnets_by_vpc ON subnets(vpc_id);

CREATE TABLE security_groups (
    group_id    TEXT PRIMARY KEY,
    vpc_id      TEXT NOT NULL REFERENCES vpcs(vpc_id),
    region      TEXT NOT NULL,
    owner_id    TEXT NOT NULL,
    group_name  TEXT NOT NULL,
    description TEXT NOT NULL,
    UNIQUE (vpc_id, group_name)
);

CREATE TABLE security_group_rules (
    rule_id             TEXT PRIMARY KEY,
    group_id            TEXT NOT NULL REFERENCES security_groups(group_id) ON DELETE CASCADE,
    is_egress           INTEGER NOT NULL,
    ip_protocol         TEXT NOT NULL,
    from_port           INTEGER,
    to_port             INTEGER,
    cidr_ipv4           TEXT,
    referenced_group_id TEXT,
    description         TEXT,
    seq                 INTEGER NOT NULL
);
CREATE INDEX security_group_rules_by_group ON security_group_rules(group_id);
CREATE INDEX security_group_rules_by_peer ON security_group_rules(referenced_group_id);

CREATE TABLE network_interfaces (
    network_interface_id  TEXT PRIMARY KEY,
    region                TEXT NOT NULL,
    owner_id              TEXT NOT NULL,
    vpc_id                TEXT NOT NULL REFERENCES vpcs(vpc_id),
    subnet_id             TEXT NOT NULL REFERENCES subnets(subnet_id),
    availability_zone     TEXT NOT NULL,
    private_ip            TEXT NOT NULL,
    mac                   TEXT NOT NULL UNIQUE,
    public_ip             TEXT UNIQUE,
    wants_public_ip       INTEGER NOT NULL DEFAULT 0,
    description           TEXT NOT NULL,
    instance_id           TEXT,
    attachment_id         TEXT,
    device_index          INTEGER NOT NULL DEFAULT 0,
    attach_time           TEXT NOT NULL,
    delete_on_termination INTEGER NOT NULL DEFAULT 1,
    UNIQUE (subnet_id, private_ip)
);
CREATE INDEX network_interfaces_by_instance ON network_interfaces(instance_id);

CREATE TABLE network_interface_groups (
    network_interface_id TEXT NOT NULL REFERENCES network_interfaces(network_interface_id) ON DELETE CASCADE,
    group_id             TEXT NOT NULL REFERENCES security_groups(group_id),
    position             INTEGER NOT NULL,
    PRIMARY KEY (network_interface_id, group_id)
);
CREATE INDEX network_interface_groups_by_group ON network_interface_groups(group_id);
"#;

const VPC_COLUMNS: &str = "vpc_id, region, owner_id, cidr_block, is_default, instance_tenancy, \
    internet_gateway_id, main_route_table_id, default_group_id, created";
const SUBNET_COLUMNS: &str = "subnet_id, vpc_id, region, owner_id, cidr_block, \
    availability_zone, default_for_az, map_public_ip";
const GROUP_COLUMNS: &str = "group_id, vpc_id, region, owner_id, group_name, description";
const RULE_COLUMNS: &str = "rule_id, group_id, is_egress, ip_protocol, from_port, to_port, \
    cidr_ipv4, referenced_group_id, description";
const ENI_COLUMNS: &str = "network_interface_id, region, owner_id, vpc_id, subnet_id, \
    availability_zone, private_ip, mac, public_ip, wants_public_ip, description, instance_id, \
    attachment_id, device_index, attach_time, delete_on_termination";

fn vpc_row(r: &Row) -> rusqlite::Result<VpcState> {
    Ok(VpcState {
        vpc_id: r.get(0)?,
        region: r.get(1)?,
        owner_id: r.get(2)?,
        cidr_block: r.get(3)?,
        is_default: r.get(4)?,
        instance_tenancy: r.get(5)?,
        internet_gateway_id: r.get(6)?,
        main_route_table_id: r.get(7)?,
        default_group_id: r.get(8)?,
        created: r.get(9)?,
    })
}

fn subnet_row(r: &Row) -> rusqlite::Result<SubnetState> {
    Ok(SubnetState {
        subnet_id: r.get(0)?,
        vpc_id: r.get(1)?,
        region: r.get(2)?,
        owner_id: r.get(3)?,
        cidr_block: r.get(4)?,
        availability_zone: r.get(5)?,
        default_for_az: r.get(6)?,
        map_public_ip_on_launch: r.get(7)?,
    })
}

fn group_row(r: &Row) -> rusqlite::Result<SecurityGroupState> {
    Ok(SecurityGroupState {
        group_id: r.get(0)?,
        vpc_id: r.get(1)?,
        region: r.get(2)?,
        owner_id: r.get(3)?,
        group_name: r.get(4)?,
        description: r.get(5)?,
    })
}

fn rule_row(r: &Row) -> rusqlite::Result<SecurityGroupRuleState> {
    Ok(SecurityGroupRuleState {
        rule_id: r.get(0)?,
        group_id: r.get(1)?,
        is_egress: r.get(2)?,
        ip_protocol: r.get(3)?,
        from_port: r.get(4)?,
        to_port: r.get(5)?,
        cidr_ipv4: r.get(6)?,
        referenced_group_id: r.get(7)?,
        description: r.get(8)?,
    })
}

fn eni_row(r: &Row) -> rusqlite::Result<NetworkInterfaceState> {
    Ok(NetworkInterfaceState {
        network_interface_id: r.get(0)?,
        region: r.get(1)?,
        owner_id: r.get(2)?,
        vpc_id: r.get(3)?,
        subnet_id: r.get(4)?,
        availability_zone: r.get(5)?,
        private_ip: r.get(6)?,
        mac: r.get(7)?,
        public_ip: r.get(8)?,
        wants_public_ip: r.get(9)?,
        description: r.get(10)?,
        instance_id: r.get(11)?,
        attachment_id: r.get(12)?,
        device_index: r.get(13)?,
        attach_time: r.get(14)?,
        delete_on_termination: r.get(15)?,
        group_ids: Vec::new(),
    })
}

impl Db<'_> {
    fn rows<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: fn(&Row) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map(params, f)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ----- VPCs -----

    /// Insert a VPC.
    pub fn insert_vpc(&self, v: &VpcState) -> Result<()> {
        self.conn.execute(
            &format!("INSERT INTO vpcs ({VPC_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)"),
            params![
                v.vpc_id,
                v.region,
                v.owner_id,
                v.cidr_block,
                v.is_default,
                v.instance_tenancy,
                v.internet_gateway_id,
                v.main_route_table_id,
                v.default_group_id,
                v.created
            ],
        )?;
        Ok(())
    }

    /// One VPC by id.
    pub fn vpc(&self, vpc_id: &str) -> Result<Option<VpcState>> {
        Ok(self
            .rows(
                &format!("SELECT {VPC_COLUMNS} FROM vpcs WHERE vpc_id = ?1"),
                [vpc_id],
                vpc_row,
            )?
            .pop())
    }

    /// The VPCs of an account in a region, oldest first.
    pub fn vpcs(&self, region: &str, owner_id: &str) -> Result<Vec<VpcState>> {
        self.rows(
            &format!(
                "SELECT {VPC_COLUMNS} FROM vpcs WHERE region = ?1 AND owner_id = ?2 \
                 ORDER BY is_default DESC, created, vpc_id"
            ),
            [region, owner_id],
            vpc_row,
        )
    }

    /// Delete a VPC with its main route table's and default group's records.
    pub fn delete_vpc(&self, vpc_id: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM security_groups WHERE vpc_id = ?1", [vpc_id])?;
        self.conn
            .execute("DELETE FROM vpcs WHERE vpc_id = ?1", [vpc_id])?;
        Ok(())
    }

    /// Whether the default VPC of an account and region was ever made
    /// (it is not made again once deleted, as on EC2).
    pub fn default_vpc_made(&self, region: &str, owner_id: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM default_vpcs_made WHERE region = ?1 AND owner_id = ?2",
                [region, owner_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Note that the default VPC of an account and region has been made.
    pub fn mark_default_vpc_made(&self, region: &str, owner_id: &str) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO default_vpcs_made (region, owner_id) VALUES (?1, ?2)",
            [region, owner_id],
        )?;
        Ok(())
    }

    // ----- subnets -----

    /// Insert a subnet.
    pub fn insert_subnet(&self, s: &SubnetState) -> Result<()> {
        self.conn.execute(
            &format!("INSERT INTO subnets ({SUBNET_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)"),
            params![
                s.subnet_id,
                s.vpc_id,
                s.region,
                s.owner_id,
                s.cidr_block,
                s.availability_zone,
                s.default_for_az,
                s.map_public_ip_on_launch
            ],
        )?;
        Ok(())
    }

    /// One subnet by id.
    pub fn subnet(&self, subnet_id: &str) -> Result<Option<SubnetState>> {
        Ok(self
            .rows(
                &format!("SELECT {SUBNET_COLUMNS} FROM subnets WHERE subnet_id = ?1"),
                [subnet_id],
                subnet_row,
            )?
            .pop())
    }

    /// The subnets of an account in a region.
    pub fn subnets(&self, region: &str, owner_id: &str) -> Result<Vec<SubnetState>> {
        self.rows(
            &format!(
                "SELECT {SUBNET_COLUMNS} FROM subnets WHERE region = ?1 AND owner_id = ?2 \
                 ORDER BY vpc_id, cidr_block"
            ),
            [region, owner_id],
            subnet_row,
        )
    }

    /// The subnets of one VPC.
    pub fn subnets_of_vpc(&self, vpc_id: &str) -> Result<Vec<SubnetState>> {
        self.rows(
            &format!("SELECT {SUBNET_COLUMNS} FROM subnets WHERE vpc_id = ?1 ORDER BY cidr_block"),
            [vpc_id],
            subnet_row,
        )
    }

    /// Delete a subnet.
    pub fn delete_subnet(&self, subnet_id: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM subnets WHERE subnet_id = ?1", [subnet_id])?;
        Ok(())
    }

    // ----- security groups -----

    /// Insert a security group.
    pub fn insert_security_group(&self, g: &SecurityGroupState) -> Result<()> {
        self.conn.execute(
            &format!("INSERT INTO security_groups ({GROUP_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6)"),
            params![
                g.group_id,
                g.vpc_id,
                g.region,
                g.owner_id,
                g.group_name,
                g.description
            ],
        )?;
        Ok(())
    }

    /// One security group by id.
    pub fn security_group(&self, group_id: &str) -> Result<Option<SecurityGroupState>> {
        Ok(self
            .rows(
                &format!("SELECT {GROUP_COLUMNS} FROM security_groups WHERE group_id = ?1"),
                [group_id],
                group_row,
            )?
            .pop())
    }

    /// The security groups of an account in a region.
    pub fn security_groups(&self, region: &str, owner_id: &str) -> Result<Vec<SecurityGroupState>> {
        self.rows(
            &format!(
                "SELECT {GROUP_COLUMNS} FROM security_groups WHERE region = ?1 AND owner_id = ?2 \
                 ORDER BY vpc_id, group_name"
            ),
            [region, owner_id],
            group_row,
        )
    }

    /// The security groups of one VPC.
    pub fn security_groups_of_vpc(&self, vpc_id: &str) -> Result<Vec<SecurityGroupState>> {
        self.rows(
            &format!(
                "SELECT {GROUP_COLUMNS} FROM security_groups WHERE vpc_id = ?1 ORDER BY group_name"
            ),
            [vpc_id],
            group_row,
        )
    }

    /// Delete a security group and its rules.
    pub fn delete_security_group(&self, group_id: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM security_group_rules WHERE group_id = ?1",
            [group_id],
        )?;
        self.conn.execute(
            "DELETE FROM security_groups WHERE group_id = ?1",
            [group_id],
        )?;
        Ok(())
    }

    // ----- rules -----

    /// Insert a rule (after the group's other rules).
    pub fn insert_security_group_rule(&self, r: &SecurityGroupRuleState) -> Result<()> {
        self.conn.execute(
            &format!(
                "INSERT INTO security_group_rules ({RULE_COLUMNS}, seq) VALUES \
                 (?1,?2,?3,?4,?5,?6,?7,?8,?9, \
                  (SELECT COALESCE(MAX(seq), 0) + 1 FROM security_group_rules))"
            ),
            params![
                r.rule_id,
                r.group_id,
                r.is_egress,
                r.ip_protocol,
                r.from_port,
                r.to_port,
                r.cidr_ipv4,
                r.referenced_group_id,
                r.description
            ],
        )?;
        Ok(())
    }

    /// The rules of a group, in the order they were added.
    pub fn security_group_rules(&self, group_id: &str) -> Result<Vec<SecurityGroupRuleState>> {
        self.rows(
            &format!(
                "SELECT {RULE_COLUMNS} FROM security_group_rules WHERE group_id = ?1 ORDER BY seq"
            ),
            [group_id],
            rule_row,
        )
    }

    /// Rules of other groups that name `group_id` as their peer.
    pub fn rules_referencing(&self, group_id: &str) -> Result<Vec<SecurityGroupRuleState>> {
        self.rows(
            &format!(
                "SELECT {RULE_COLUMNS} FROM security_group_rules \
                 WHERE referenced_group_id = ?1 ORDER BY seq"
            ),
            [group_id],
            rule_row,
        )
    }

    /// Delete one rule.
    pub fn delete_security_group_rule(&self, rule_id: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM security_group_rules WHERE rule_id = ?1",
            [rule_id],
        )?;
        Ok(())
    }

    // ----- network interfaces -----

    /// Insert a network interface with its groups.
    pub fn insert_network_interface(&self, n: &NetworkInterfaceState) -> Result<()> {
        self.conn.execute(
            &format!(
                "INSERT INTO network_interfaces ({ENI_COLUMNS}) VALUES \
                 (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16)"
            ),
            params![
                n.network_interface_id,
                n.region,
                n.owner_id,
                n.vpc_id,
                n.subnet_id,
                n.availability_zone,
                n.private_ip,
                n.mac,
                n.public_ip,
                n.wants_public_ip,
                n.description,
                n.instance_id,
                n.attachment_id,
                n.device_index,
                n.attach_time,
                n.delete_on_termination
            ],
        )?;
        self.set_network_interface_groups(&n.network_interface_id, &n.group_ids)
    }

    /// Replace the groups of a network interface.
    pub fn set_network_interface_groups(&self, eni_id: &str, group_ids: &[String]) -> Result<()> {
        self.conn.execute(
            "DELETE FROM network_interface_groups WHERE network_interface_id = ?1",
            [eni_id],
        )?;
        for (n, g) in group_ids.iter().enumerate() {
            self.conn.execute(
                "INSERT INTO network_interface_groups (network_interface_id, group_id, position) \
                 VALUES (?1, ?2, ?3)",
                params![eni_id, g, n as i64],
            )?;
        }
        Ok(())
    }

    /// Set or clear the public address of a network interface.
    pub fn set_public_ip(&self, eni_id: &str, public_ip: Option<&str>) -> Result<()> {
        self.conn.execute(
            "UPDATE network_interfaces SET public_ip = ?2 WHERE network_interface_id = ?1",
            params![eni_id, public_ip],
        )?;
        Ok(())
    }

    fn with_groups(
        &self,
        mut list: Vec<NetworkInterfaceState>,
    ) -> Result<Vec<NetworkInterfaceState>> {
        for n in &mut list {
            n.group_ids = self.network_interface_group_ids(&n.network_interface_id)?;
        }
        Ok(list)
    }

    fn network_interface_group_ids(&self, eni_id: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT group_id FROM network_interface_groups WHERE network_interface_id = ?1 \
             ORDER BY position",
        )?;
        let rows = stmt.query_map([eni_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every network interface (in any region), for allocation and cleanup.
    pub fn all_network_interfaces(&self) -> Result<Vec<NetworkInterfaceState>> {
        let list = self.rows(
            &format!("SELECT {ENI_COLUMNS} FROM network_interfaces ORDER BY network_interface_id"),
            [],
            eni_row,
        )?;
        self.with_groups(list)
    }

    /// The network interfaces of an account in a region.
    pub fn network_interfaces(
        &self,
        region: &str,
        owner_id: &str,
    ) -> Result<Vec<NetworkInterfaceState>> {
        let list = self.rows(
            &format!(
                "SELECT {ENI_COLUMNS} FROM network_interfaces WHERE region = ?1 AND owner_id = ?2 \
                 ORDER BY attach_time, network_interface_id"
            ),
            [region, owner_id],
            eni_row,
        )?;
        self.with_groups(list)
    }

    /// The network interfaces of one instance, by device index.
    pub fn instance_network_interfaces(
        &self,
        instance_id: &str,
    ) -> Result<Vec<NetworkInterfaceState>> {
        let list = self.rows(
            &format!(
                "SELECT {ENI_COLUMNS} FROM network_interfaces WHERE instance_id = ?1 \
                 ORDER BY device_index"
            ),
            [instance_id],
            eni_row,
        )?;
        self.with_groups(list)
    }

    /// The network interfaces in one of these groups.
    pub fn network_interfaces_in_group(
        &self,
        group_id: &str,
    ) -> Result<Vec<NetworkInterfaceState>> {
        let list = self.rows(
            &format!(
                "SELECT {ENI_COLUMNS} FROM network_interfaces WHERE network_interface_id IN \
                 (SELECT network_interface_id FROM network_interface_groups WHERE group_id = ?1) \
                 ORDER BY network_interface_id"
            ),
            [group_id],
            eni_row,
        )?;
        self.with_groups(list)
    }

    /// Delete a network interface.
    pub fn delete_network_interface(&self, eni_id: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM network_interfaces WHERE network_interface_id = ?1",
            [eni_id],
        )?;
        Ok(())
    }
}
