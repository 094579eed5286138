//! What a guest's network is made of, handed on: its [`VpcAttachment`]
//! for the data plane at boot and after every rule or membership change
//! (`ModifyInstanceAttribute groupSet` included), and what IMDS tells it.

use super::*;

/// What the data plane needs of one interface.
fn attachment_of(db: &Db, e: &NetworkInterfaceState) -> Result<VpcAttachment> {
    let vpc = db.vpc(&e.vpc_id)?.ok_or_else(|| {
        Error::internal(format!(
            "VPC {} of {} is gone",
            e.vpc_id, e.network_interface_id
        ))
    })?;
    let subnet = db.subnet(&e.subnet_id)?.ok_or_else(|| {
        Error::internal(format!(
            "Subnet {} of {} is gone",
            e.subnet_id, e.network_interface_id
        ))
    })?;
    let mut members: HashMap<String, Vec<String>> = HashMap::new();
    let (mut ingress, mut egress) = (Vec::new(), Vec::new());
    for g in &e.group_ids {
        for r in db.security_group_rules(g)? {
            let peers = match (&r.cidr_ipv4, &r.referenced_group_id) {
                (Some(c), _) => vec![c.clone()],
                (None, Some(peer)) => {
                    if !members.contains_key(peer) {
                        let mut m: Vec<String> = db
                            .network_interfaces_in_group(peer)?
                            .into_iter()
                            .filter(|n| n.instance_id.is_some())
                            .map(|n| format!("{}/32", n.private_ip))
                            .collect();
                        m.sort();
                        members.insert(peer.clone(), m);
                    }
                    members[peer].clone()
                }
                (None, None) => Vec::new(),
            };
            if peers.is_empty() {
                continue;
            }
            let protocol = match r.ip_protocol.as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                "icmp" => Protocol::Icmp,
                _ => Protocol::All,
            };
            let port = |p: Option<i64>| p.and_then(|p| u16::try_from(p).ok());
            let rule = FlowRule {
                protocol,
                from_port: if protocol == Protocol::All {
                    None
                } else {
                    port(r.from_port)
                },
                to_port: if protocol == Protocol::All {
                    None
                } else {
                    port(r.to_port)
                },
                peers,
            };
            let list = if r.is_egress {
                &mut egress
            } else {
                &mut ingress
            };
            if !list.contains(&rule) {
                list.push(rule);
            }
        }
    }
    Ok(VpcAttachment {
        vpc_id: vpc.vpc_id.clone(),
        vpc_cidr: vpc.cidr_block.clone(),
        subnet_id: subnet.subnet_id.clone(),
        subnet_cidr: subnet.cidr_block.clone(),
        network_interface_id: e.network_interface_id.clone(),
        private_ip: parse_ip(&e.private_ip)?,
        mac: e.mac.clone(),
        public_ip: e.public_ip.as_deref().map(parse_ip).transpose()?,
        internet_gateway: vpc.internet_gateway_id.is_some(),
        ingress,
        egress,
    })
}

impl Service {
    /// The VPC attachment for the next boot of an instance: a public
    /// address is taken now if its interface wants one. `None` for an
    /// instance without an interface (launched before VPCs existed).
    pub fn vpc_attachment_for_boot(&mut self, instance_id: &str) -> Result<Option<VpcAttachment>> {
        let attachment = self.store.write(|db| -> Result<Option<VpcAttachment>> {
            let Some(mut e) = db
                .instance_network_interfaces(instance_id)?
                .into_iter()
                .next()
            else {
                return Ok(None);
            };
            if e.wants_public_ip && e.public_ip.is_none() {
                let ip = allocate_public(db)?;
                db.set_public_ip(&e.network_interface_id, Some(&ip))?;
                e.public_ip = Some(ip);
            }
            attachment_of(db, &e).map(Some)
        })?;
        if attachment.is_some() {
            // Peers whose rules name this instance's groups now admit it.
            self.apply_after_membership_change(instance_id, &[], false);
        }
        Ok(attachment)
    }

    /// What IMDS tells a guest about its network (`None` without an interface).
    pub(crate) fn imds_network(
        &mut self,
        instance_id: &str,
        region: &str,
    ) -> Result<Option<crate::metadata::imds::ImdsVpc>> {
        self.store
            .read(|db| -> Result<Option<crate::metadata::imds::ImdsVpc>> {
                let Some(e) = db
                    .instance_network_interfaces(instance_id)?
                    .into_iter()
                    .next()
                else {
                    return Ok(None);
                };
                let vpc = db.vpc(&e.vpc_id)?;
                let subnet = db.subnet(&e.subnet_id)?;
                let mut names = Vec::new();
                for g in &e.group_ids {
                    names.push(
                        db.security_group(g)?
                            .map(|g| g.group_name)
                            .unwrap_or_default(),
                    );
                }
                Ok(Some(crate::metadata::imds::ImdsVpc {
                    vpc_id: e.vpc_id.clone(),
                    vpc_cidr: vpc.map(|v| v.cidr_block).unwrap_or_default(),
                    subnet_id: e.subnet_id.clone(),
                    subnet_cidr: subnet.map(|s| s.cidr_block).unwrap_or_default(),
                    interface_id: e.network_interface_id.clone(),
                    local_ipv4: e.private_ip.clone(),
                    local_hostname: private_dns_name(&e.private_ip, region),
                    mac: e.mac.clone(),
                    security_group_ids: e.group_ids.clone(),
                    security_groups: names,
                    public_ipv4: e.public_ip.clone(),
                    public_hostname: e.public_ip.as_deref().map(|p| public_dns_name(p, region)),
                }))
            })
    }

    /// `ModifyInstanceAttribute groupSet`: replace the groups of an
    /// instance's interface; running instances it affects get new rules.
    pub fn set_instance_groups(
        &mut self,
        caller: &Caller,
        instance_id: &str,
        group_ids: &[String],
    ) -> Result<()> {
        if group_ids.is_empty() {
            return Err(Error::missing("GroupId"));
        }
        if group_ids.len() > MAX_GROUPS {
            return Err(Error::invalid_value(format!(
                "At most {MAX_GROUPS} security groups can be given per network interface"
            )));
        }
        let _lock = object_lock::lock(&self.paths, instance_id)?;
        let instance = self
            .owned_instances(caller, &[instance_id.to_string()])?
            .remove(0);
        if instance.state == InstanceStateName::Terminated {
            return Err(Error::incorrect_instance_state(format!(
                "The instance '{instance_id}' is not in a state from which its groups can be changed (terminated)"
            )));
        }
        let old = self.store.write(|db| -> Result<Vec<String>> {
            let Some(e) = db.instance_network_interfaces(instance_id)?.into_iter().next() else {
                return Err(Error::new(
                    ErrorCode::UnsupportedOperation,
                    format!("The instance '{instance_id}' has no network interface in a VPC (launched before amirun had VPCs)"),
                ));
            };
            let mut wanted = Vec::new();
            for id in group_ids {
                let g = owned_group(db, caller, id)?;
                if g.vpc_id != e.vpc_id {
                    return Err(Error::new(
                        ErrorCode::InvalidParameter,
                        format!(
                            "Security group {} and instance {instance_id} belong to different networks.",
                            g.group_id
                        ),
                    ));
                }
                if !wanted.contains(&g.group_id) {
                    wanted.push(g.group_id);
                }
            }
            db.set_network_interface_groups(&e.network_interface_id, &wanted)?;
            Ok(e.group_ids)
        })?;
        let mut changed: Vec<String> = old;
        changed.extend(group_ids.iter().cloned());
        self.apply_after_membership_change(instance_id, &changed, true);
        Ok(())
    }

    /// Hand the data plane new rules for every running instance in these groups.
    pub(crate) fn apply_rules_of_groups(&mut self, group_ids: &[String]) {
        let result = self.vpc_attachments_in_groups(group_ids);
        apply_all(result);
    }

    /// What the data plane must enforce now for each pending or running
    /// instance in one of these groups: (instance id, attachment).
    pub fn vpc_attachments_in_groups(
        &mut self,
        group_ids: &[String],
    ) -> Result<Vec<(String, VpcAttachment)>> {
        self.store
            .read(|db| -> Result<Vec<(String, VpcAttachment)>> {
                let mut seen = BTreeSet::new();
                let mut out = Vec::new();
                for g in group_ids {
                    for e in db.network_interfaces_in_group(g)? {
                        if seen.insert(e.network_interface_id.clone()) {
                            if let Some(a) = running_attachment(db, &e)? {
                                out.push(a);
                            }
                        }
                    }
                }
                Ok(out)
            })
    }

    /// After an instance joined or left groups (launch, terminate, groupSet):
    /// every running instance whose rules name one of its groups (`extra`
    /// are groups it left), and with `include_self` the instance itself.
    pub(super) fn apply_after_membership_change(
        &mut self,
        instance_id: &str,
        extra: &[String],
        include_self: bool,
    ) {
        let result = self
            .store
            .read(|db| -> Result<Vec<(String, VpcAttachment)>> {
                let mut out = Vec::new();
                let mut groups: Vec<String> = extra.to_vec();
                for e in db.instance_network_interfaces(instance_id)? {
                    groups.extend(e.group_ids.iter().cloned());
                    if include_self {
                        out.extend(running_attachment(db, &e)?);
                    }
                }
                out.extend(referencing_attachments(db, &groups, Some(instance_id))?);
                Ok(out)
            });
        apply_all(result);
    }

    /// Every running instance whose rules name one of `groups` (but `skip`).
    pub(super) fn apply_to_referencing(&mut self, groups: &[String], skip: Option<&str>) {
        let result = self
            .store
            .read(|db| referencing_attachments(db, groups, skip));
        apply_all(result);
    }
}

/// The attachments of running instances whose groups' rules name one of `groups`.
fn referencing_attachments(
    db: &Db,
    groups: &[String],
    skip: Option<&str>,
) -> Result<Vec<(String, VpcAttachment)>> {
    let mut holders = BTreeSet::new();
    for g in groups {
        for r in db.rules_referencing(g)? {
            holders.insert(r.group_id);
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for h in holders {
        for e in db.network_interfaces_in_group(&h)? {
            if e.instance_id.as_deref() == skip || !seen.insert(e.network_interface_id.clone()) {
                continue;
            }
            if let Some(a) = running_attachment(db, &e)? {
                out.push(a);
            }
        }
    }
    Ok(out)
}

/// The attachment of an interface whose instance is pending or running.
fn running_attachment(
    db: &Db,
    e: &NetworkInterfaceState,
) -> Result<Option<(String, VpcAttachment)>> {
    let Some(id) = &e.instance_id else {
        return Ok(None);
    };
    match db.instance(id)? {
        Some(i)
            if matches!(
                i.state,
                InstanceStateName::Pending | InstanceStateName::Running
            ) =>
        {
            Ok(Some((id.clone(), attachment_of(db, e)?)))
        }
        _ => Ok(None),
    }
}

/// Apply each attachment; a failure is logged, never the caller's error
/// (the records are right; the next boot applies them).
fn apply_all(result: Result<Vec<(String, VpcAttachment)>>) {
    match result {
        Ok(list) => {
            for (instance_id, a) in list {
                if let Err(e) = crate::network::apply_vpc_rules(&a) {
                    tracing::warn!("Cannot apply the security-group rules of {instance_id}: {e}");
                }
            }
        }
        Err(e) => tracing::warn!("Cannot resolve security-group rules to apply: {e}"),
    }
}
