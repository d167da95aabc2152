//! `warren doctor`: when sharing does not work, say why, and the command
//! that fixes it.
//!
//! Sharing fails in ordinary offices for ordinary reasons (Wi-Fi that drops
//! multicast, a firewall on the port, a coworker who has not added your
//! key, a daemon that is not running), and each looks the same from a
//! build: no peer hits. The doctor checks, in order, what a build depends
//! on (the Go side, the store, the identity, the daemon, listening, mDNS,
//! each allowlisted peer, the static peers) and prints one line per check,
//! with the cause and the fix of each problem. Peers are probed through the
//! daemon, which dials every allowlisted peer it is not connected to and
//! reports how each dial ended ([`warren_p2p::ConnectFailure`]); nothing
//! is sent to a host that is neither allowlisted nor a static peer.

//!
//! - [`local`]: the Go side, the store, the identity and config;
//! - [`gocacheprog`]: whether the program `GOCACHEPROG` names is warren;
//! - [`daemon`]: the daemon, listening and mDNS;
//! - [`route`]: whether mDNS would leave through a VPN's tunnel;
//! - [`peers`]: each allowlisted peer, and the static peers;
//! - [`bucket`]: the team bucket, if one is configured.

mod bucket;
mod daemon;
mod gocacheprog;
mod local;
mod peers;
mod route;

use std::io::Write;
use std::process::ExitCode;

use serde::Serialize;

use self::daemon::{check_daemon, check_helper_version, check_listening, check_mdns};
use self::local::{Prog, check_go, check_identity, check_store};
use self::peers::{check_peers, check_replication, check_static_peers};
use crate::config::Config;
use crate::config::trust::Allowlist;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Ok,
    Warning,
    Problem,
}

/// One check's result.
#[derive(Debug, Serialize)]
struct Check {
    section: &'static str,
    status: Status,
    what: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cause: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

/// The checks made so far, in order.
#[derive(Default)]
struct Report {
    section: &'static str,
    checks: Vec<Check>,
}

impl Report {
    fn section(&mut self, name: &'static str) {
        self.section = name;
    }

    fn ok(&mut self, what: impl Into<String>) {
        self.add(Status::Ok, what, None, None);
    }

    fn warning(&mut self, what: impl Into<String>, cause: Option<String>, fix: Option<String>) {
        self.add(Status::Warning, what, cause, fix);
    }

    fn problem(&mut self, what: impl Into<String>, cause: Option<String>, fix: Option<String>) {
        self.add(Status::Problem, what, cause, fix);
    }

    fn add(
        &mut self,
        status: Status,
        what: impl Into<String>,
        cause: Option<String>,
        fix: Option<String>,
    ) {
        self.checks.push(Check {
            section: self.section,
            status,
            what: what.into(),
            cause,
            fix,
        });
    }

    fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    fn print(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut section = "";
        for check in &self.checks {
            if check.section != section {
                section = check.section;
                writeln!(out, "{section}")?;
            }
            let status = match check.status {
                Status::Ok => "ok",
                Status::Warning => "warning",
                Status::Problem => "problem",
            };
            writeln!(out, "  {status:<8} {}", check.what)?;
            if let Some(cause) = &check.cause {
                writeln!(out, "           cause: {cause}")?;
            }
            if let Some(fix) = &check.fix {
                writeln!(out, "           fix: {fix}")?;
            }
        }
        let (problems, warnings) = (self.count(Status::Problem), self.count(Status::Warning));
        writeln!(out)?;
        match (problems, warnings) {
            (0, 0) => writeln!(out, "No problems found."),
            _ => writeln!(
                out,
                "{problems} problem{}, {warnings} warning{}.",
                plural(problems),
                plural(warnings)
            ),
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Runs every check; exits 1 if any found a problem.
pub(super) fn doctor(
    config: anyhow::Result<Config>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let mut report = Report::default();
    let prog = check_go(&mut report);
    match config {
        Ok(config) => check_warren(&config, prog.as_ref(), &mut report),
        Err(e) => {
            report.section("Config");
            report.problem(
                "the settings cannot be read",
                Some(crate::logging::chain(&*e)),
                Some("correct the config file or the WARREN_* variable named above".into()),
            );
        }
    }
    if json {
        let problems = report.count(Status::Problem);
        let warnings = report.count(Status::Warning);
        serde_json::to_writer_pretty(
            &mut *out,
            &serde_json::json!({
                "problems": problems,
                "warnings": warnings,
                "checks": report.checks,
            }),
        )?;
        writeln!(out)?;
    } else {
        report.print(out)?;
    }
    Ok(if report.count(Status::Problem) > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn check_warren(config: &Config, prog: Option<&Prog>, report: &mut Report) {
    check_store(config, report);
    bucket::check_bucket(config, report);
    let Some(me) = check_identity(config, report) else {
        return;
    };
    let names = Allowlist::load(&config.allowlist_path()).unwrap_or_default();
    let Some(status) = check_daemon(config, report) else {
        return;
    };
    check_helper_version(prog, &status, report);
    check_listening(&status, report);
    check_mdns(config, &status, &names, report);
    check_peers(config, &status, &names, &me, report);
    check_replication(config, &status, &names, &me, report);
    check_static_peers(config, &status, &names, report);
}

/// The command that restarts the daemon whose process is `pid`, if known.
fn restart_daemon(pid: Option<u32>) -> String {
    match pid {
        Some(pid) if pid > 0 => format!("kill {pid} && warren daemon"),
        _ => {
            "stop the old daemon (pkill -u \"$USER\" -f 'warren daemon'), then run `warren daemon`"
                .into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_counts_and_says_the_fix() {
        let mut report = Report::default();
        report.section("Peers");
        report.ok("alice: connected");
        report.problem(
            "bob: closed the connection right after the handshake",
            Some("bob has not allowlisted you yet".into()),
            Some("ask bob to run `warren peers add X --name me`".into()),
        );
        let mut out = Vec::new();
        report.print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("Peers\n  ok       alice: connected\n  problem  bob:"),
            "{text}"
        );
        assert!(text.contains("           fix: ask bob to run `warren peers add X --name me`\n"));
        assert!(text.ends_with("1 problem, 0 warnings.\n"), "{text}");
    }
}
