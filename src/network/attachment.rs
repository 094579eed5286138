//! A guest's place in its VPC, as the service hands it to the supervisor and
//! the network plumbing: the seam between the VPC model (`service`) and the
//! data plane (`network`).
//!
//! The service resolves everything here from its records (subnet, address,
//! security groups, whose members it expands to addresses), so the network
//! code never reads the database and a rule change is one new
//! [`VpcAttachment`] applied to a running guest.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Where one guest sits in its VPC and what may reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpcAttachment {
    /// `vpc-…`
    pub vpc_id: String,
    /// The VPC's IPv4 block, e.g. `172.31.0.0/16`.
    pub vpc_cidr: String,
    /// `subnet-…`
    pub subnet_id: String,
    /// The subnet's IPv4 block, e.g. `172.31.16.0/20`.
    pub subnet_cidr: String,
    /// `eni-…` of the primary network interface.
    pub network_interface_id: String,
    /// The guest's private address in the subnet.
    pub private_ip: Ipv4Addr,
    /// The interface's MAC address, `0a:…` as on EC2.
    pub mac: String,
    /// The address the host reaches the guest at (`PublicIpAddress`), if it has one.
    pub public_ip: Option<Ipv4Addr>,
    /// Whether the VPC has an internet gateway: the only way out of the host.
    pub internet_gateway: bool,
    /// What may reach the guest: the union of its security groups' ingress rules.
    pub ingress: Vec<FlowRule>,
    /// Where the guest may send: the union of its groups' egress rules.
    pub egress: Vec<FlowRule>,
}

/// One security-group rule with its peers resolved to address blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRule {
    pub protocol: Protocol,
    /// First port (TCP/UDP) or ICMP type; `None` for every port.
    pub from_port: Option<u16>,
    /// Last port (TCP/UDP) or ICMP code; `None` for every port.
    pub to_port: Option<u16>,
    /// IPv4 blocks the rule admits (a referenced group's members as `/32`s).
    pub peers: Vec<String>,
}

/// The protocols a rule can name (`IpProtocol`: `tcp`, `udp`, `icmp`, `-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    /// `-1`: every protocol and port.
    All,
}
