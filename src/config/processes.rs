//! The `processes` section resolved: each group's matchers, with the
//! command-line regular expressions compiled once.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use regex::RegexSet;

use super::error::Problems;
use super::schema::ProcessGroupConfig;
use super::validate::{check_label_value, check_schedule};

/// A named group of processes to sample.
#[derive(Debug, Clone)]
pub struct ProcessGroup {
    /// The `group` label value.
    pub name: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub matchers: ProcessMatchers,
}

/// A process belongs to the group when it matches every kind given (any
/// entry within a kind).
#[derive(Debug, Clone, Default)]
pub struct ProcessMatchers {
    /// Exact names as in `/proc/PID/comm`.
    pub comm: Vec<String>,
    /// Executable paths; a bare name matches the basename.
    pub exe: Vec<String>,
    /// Searched in the command line (arguments joined by spaces).
    pub cmdline: Option<RegexSet>,
    /// A file holding the PID of the group's one process.
    pub pid_file: Option<PathBuf>,
}

pub(super) fn resolve(groups: &[ProcessGroupConfig], problems: &mut Problems) -> Vec<ProcessGroup> {
    let mut seen = HashSet::new();
    let mut resolved = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let path = format!("processes[{i}]");
        check_label_value(problems, format!("{path}.name"), &group.name);
        if !seen.insert(group.name.as_str()) {
            problems.push(
                format!("{path}.name"),
                format!("{:?} is used by an earlier group", group.name),
            );
        }
        check_schedule(problems, &path, group.interval, group.timeout);
        let m = &group.matchers;
        if m.comm.is_empty() && m.exe.is_empty() && m.cmdline.is_empty() && m.pid_file.is_none() {
            problems.push(
                format!("{path}.match"),
                "needs at least one of comm, exe, cmdline, pid_file",
            );
        }
        for (j, comm) in m.comm.iter().enumerate() {
            if comm.is_empty() || comm.len() > 15 {
                problems.push(
                    format!("{path}.match.comm[{j}]"),
                    format!(
                        "{comm:?} can never match: the kernel keeps 1 to 15 bytes of a process name"
                    ),
                );
            }
        }
        let mut valid = true;
        for (j, re) in m.cmdline.iter().enumerate() {
            if let Err(e) = regex::Regex::new(re) {
                valid = false;
                let first_line = e.to_string().lines().last().unwrap_or_default().to_owned();
                problems.push(
                    format!("{path}.match.cmdline[{j}]"),
                    format!("invalid regular expression {re:?}: {first_line}"),
                );
            }
        }
        let cmdline = match (valid, m.cmdline.is_empty()) {
            (true, false) => match RegexSet::new(&m.cmdline) {
                Ok(set) => Some(set),
                Err(e) => {
                    problems.push(format!("{path}.match.cmdline"), e);
                    None
                }
            },
            _ => None,
        };
        resolved.push(ProcessGroup {
            name: group.name.clone(),
            interval: group.interval,
            timeout: group.timeout,
            matchers: ProcessMatchers {
                comm: m.comm.clone(),
                exe: m.exe.clone(),
                cmdline,
                pid_file: m.pid_file.clone(),
            },
        });
    }
    resolved
}
