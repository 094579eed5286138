//! `DescribeInstanceStatus`: EC2's system and instance status checks, judged
//! from live facts rather than stored guesses, so that the SDKs' and the aws
//! CLI's `instance-status-ok` waiters wait for a guest that has really booted.
//!
//! - The **system** check is the host's side: the instance's supervisor and
//!   its QEMU are alive (`ok`); a running instance whose QEMU is gone is
//!   `impaired`.
//! - The **instance** check (reachability) is the guest's side, read from
//!   the serial console of the current boot (QEMU truncates it at each
//!   start): `initializing` until the guest shows it is up (a login prompt,
//!   cloud-init's "finished" line, amirun's tiny images' `ready`), `ok`
//!   after, `impaired` when the kernel panicked or QEMU died. A guest reboot
//!   starts a new kernel banner, and the check is `initializing` again.
//!
//! Instances that are not `running` are listed only with
//! `IncludeAllInstances`, with both checks `not-applicable`, as on EC2.

use super::filter;
use super::shapes::Filter;
use super::{Caller, Error, ErrorCode, Result, Service};
use crate::domain::InstanceStateName;
use crate::instance::supervisor;
use crate::store::InstanceState;
use serde::{Deserialize, Serialize};

/// `DescribeInstanceStatus` input (botocore's `DescribeInstanceStatusRequest`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeInstanceStatusRequest {
    #[serde(default)]
    pub instance_ids: Vec<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub include_all_instances: bool,
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// `DescribeInstanceStatus` output.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeInstanceStatusResult {
    pub instance_statuses: Vec<InstanceStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// One instance's status (botocore's `InstanceStatus`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceStatus {
    pub availability_zone: String,
    pub instance_id: String,
    pub instance_state: InstanceStateValue,
    pub instance_status: InstanceStatusSummary,
    pub system_status: InstanceStatusSummary,
}

/// `InstanceState`: code and name.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceStateValue {
    pub code: u16,
    pub name: String,
}

/// `InstanceStatusSummary`: the summary status and its one check.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceStatusSummary {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<InstanceStatusDetails>,
    pub status: String,
}

/// `InstanceStatusDetails`: the `reachability` check.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceStatusDetails {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impaired_since: Option<String>,
    pub name: String,
    pub status: String,
}

/// What a check found: EC2's summary status with its reachability status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Ok,
    Initializing,
    Impaired,
    NotApplicable,
}

impl Check {
    fn summary(self) -> &'static str {
        match self {
            Check::Ok => "ok",
            Check::Initializing => "initializing",
            Check::Impaired => "impaired",
            Check::NotApplicable => "not-applicable",
        }
    }

    fn reachability(self) -> Option<&'static str> {
        match self {
            Check::Ok => Some("passed"),
            Check::Initializing => Some("initializing"),
            Check::Impaired => Some("failed"),
            Check::NotApplicable => None,
        }
    }

    fn shape(self, impaired_since: Option<&str>) -> InstanceStatusSummary {
        InstanceStatusSummary {
            details: self
                .reachability()
                .map(|status| InstanceStatusDetails {
                    impaired_since: (self == Check::Impaired)
                        .then(|| impaired_since.map(String::from))
                        .flatten(),
                    name: "reachability".into(),
                    status: status.into(),
                })
                .into_iter()
                .collect(),
            status: self.summary().into(),
        }
    }
}

/// Lines a guest prints once it is up: a login prompt, cloud-init's last
/// line, amirun's tiny images' last line of start-up.
const BOOTED_MARKERS: &[&str] = &[" login: ", "Cloud-init v. ", "amirun-tiny: ready"];
/// The start of a boot (Linux's banner).
const BOOT_MARKER: &str = "Linux version ";
/// A dead guest.
const PANIC_MARKER: &str = "Kernel panic - not syncing";

/// The guest's side of the instance check, from the console of the current
/// QEMU run: what the last boot on it shows.
pub fn guest_check(console: &str) -> Check {
    let boot = console.rfind(BOOT_MARKER).unwrap_or(0);
    let last = &console[boot..];
    if last.contains(PANIC_MARKER) {
        return Check::Impaired;
    }
    let booted = BOOTED_MARKERS.iter().any(|m| match *m {
        // cloud-init prints "Cloud-init v. X running ..." at each stage: only
        // its final line says it is done.
        "Cloud-init v. " => last.match_indices(m).any(|(i, _)| {
            last[i..]
                .lines()
                .next()
                .is_some_and(|l| l.contains(" finished at "))
        }),
        _ => last.contains(m),
    });
    if booted {
        Check::Ok
    } else {
        Check::Initializing
    }
}

/// EC2's filters for `DescribeInstanceStatus` (botocore's list), the
/// others answered from the status as shown ([`filter::shown_values`]).
const STATUS_FILTERS: &[&str] = &[
    "availability-zone",
    "instance-state-code",
    "instance-state-name",
    "instance-status.reachability",
    "instance-status.status",
    "system-status.reachability",
    "system-status.status",
    "availability-zone-id",
    "event.code",
    "event.description",
    "event.instance-event-id",
    "event.not-after",
    "event.not-before",
    "event.not-before-deadline",
    "operator.managed",
    "operator.principal",
    "attached-ebs-status.status",
    "application-status.status",
];

impl Service {
    /// `DescribeInstanceStatus`: the checks of the named instances, or of
    /// all the caller's, running ones only unless `IncludeAllInstances`.
    pub fn describe_instance_status(
        &mut self,
        caller: &Caller,
        input: DescribeInstanceStatusRequest,
    ) -> Result<DescribeInstanceStatusResult> {
        filter::check_names(&input.filters, STATUS_FILTERS)?;
        if input.max_results.is_some() && !input.instance_ids.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidParameterCombination,
                "The parameter instancesSet cannot be used with the parameter maxResults",
            ));
        }
        let instances: Vec<InstanceState> = if input.instance_ids.is_empty() {
            self.refresh_instances(caller)?;
            self.store
                .read(|db| db.instances_in_region(&caller.region))?
                .into_iter()
                .filter(|i| {
                    i.owner_id == caller.account && i.state != InstanceStateName::Terminated
                })
                .collect()
        } else {
            self.owned_instances(caller, &input.instance_ids)?
        };
        let mut statuses = Vec::new();
        for i in instances {
            if i.state != InstanceStateName::Running && !input.include_all_instances {
                continue;
            }
            let s = self.instance_status(&i);
            let keep = filter::matches(&input.filters, |name| match name {
                "availability-zone" => vec![s.availability_zone.clone()],
                "instance-state-code" => vec![s.instance_state.code.to_string()],
                "instance-state-name" => vec![s.instance_state.name.clone()],
                "instance-status.status" => vec![s.instance_status.status.clone()],
                "system-status.status" => vec![s.system_status.status.clone()],
                "instance-status.reachability" => reachability(&s.instance_status),
                "system-status.reachability" => reachability(&s.system_status),
                n => filter::shown_values(&s, n),
            });
            if keep {
                statuses.push(s);
            }
        }
        let paging = super::paging::Paging {
            max_results: input.max_results,
            next_token: input.next_token,
        };
        let (instance_statuses, next_token) = super::paging::page(statuses, &paging, 5, 1000)?;
        Ok(DescribeInstanceStatusResult {
            instance_statuses,
            next_token,
        })
    }

    /// The checks of one (reconciled) instance.
    fn instance_status(&self, i: &InstanceState) -> InstanceStatus {
        let (system, instance, since) = if i.state == InstanceStateName::Running {
            let live = supervisor::probe(&self.paths, &i.instance_id);
            if live.supervisor_alive && live.qemu_alive {
                let console = std::fs::read(self.paths.serial_log(&i.instance_id))
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let since = (guest_check(&console) == Check::Impaired)
                    .then(|| {
                        std::fs::metadata(self.paths.serial_log(&i.instance_id))
                            .and_then(|m| m.modified())
                            .ok()
                            .map(|t| iso(chrono::DateTime::<chrono::Utc>::from(t)))
                    })
                    .flatten();
                (Check::Ok, guest_check(&console), since)
            } else {
                let since = live
                    .last_exit_at
                    .map(iso)
                    .unwrap_or_else(|| iso(chrono::Utc::now()));
                (Check::Impaired, Check::Impaired, Some(since))
            }
        } else {
            (Check::NotApplicable, Check::NotApplicable, None)
        };
        InstanceStatus {
            availability_zone: format!("{}a", i.region),
            instance_id: i.instance_id.clone(),
            instance_state: InstanceStateValue {
                code: i.state.code(),
                name: i.state.to_string(),
            },
            instance_status: instance.shape(since.as_deref()),
            system_status: system.shape(since.as_deref()),
        }
    }
}

fn reachability(s: &InstanceStatusSummary) -> Vec<String> {
    s.details.iter().map(|d| d.status.clone()).collect()
}

fn iso(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_check_follows_the_last_boot() {
        assert_eq!(guest_check(""), Check::Initializing);
        let booting = "SeaBIOS\n[    0.000000] Linux version 6.1.0\namirun-tiny: boot 1\n";
        assert_eq!(guest_check(booting), Check::Initializing);
        let ready = format!("{booting}amirun-tiny: ready\n");
        assert_eq!(guest_check(&ready), Check::Ok);
        // A reboot: a new banner after the old ready line.
        let rebooting = format!("{ready}[    0.000000] Linux version 6.1.0\n");
        assert_eq!(guest_check(&rebooting), Check::Initializing);
        let debian = "Linux version 6.1\nDebian GNU/Linux 12 ip-10 ttyS0\n\nip-10 login: ";
        assert_eq!(guest_check(debian), Check::Ok);
        let stage = "Linux version 6.1\nCloud-init v. 22.4.2 running 'modules:config' at Mon\n";
        assert_eq!(guest_check(stage), Check::Initializing);
        let done = format!("{stage}Cloud-init v. 22.4.2 finished at Mon, 30 Nov. Datasource X\n");
        assert_eq!(guest_check(&done), Check::Ok);
        let panic = "Linux version 6.1\nKernel panic - not syncing: VFS: Unable to mount root\n";
        assert_eq!(guest_check(panic), Check::Impaired);
    }

    #[test]
    fn shapes_carry_reachability() {
        let s = Check::Impaired.shape(Some("2026-01-01T00:00:00.000Z"));
        assert_eq!(s.status, "impaired");
        assert_eq!(s.details[0].status, "failed");
        assert_eq!(
            s.details[0].impaired_since.as_deref(),
            Some("2026-01-01T00:00:00.000Z")
        );
        let s = Check::Ok.shape(Some("x"));
        assert_eq!(
            (s.status.as_str(), s.details[0].status.as_str()),
            ("ok", "passed")
        );
        assert!(s.details[0].impaired_since.is_none());
        assert!(Check::NotApplicable.shape(None).details.is_empty());
    }
}
