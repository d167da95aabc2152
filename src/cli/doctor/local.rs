//! Checks of this machine alone: the Go side, the store, the identity.

use std::path::{Path, PathBuf};

use bytesize::ByteSize;

use super::gocacheprog::{self, Program};
use super::{Report, plural};
use crate::config::Config;
use crate::config::identity;
use crate::config::trust::Allowlist;
use crate::daemon::disk_floor::floor;
use crate::fsutil::lock::FileLock;
use crate::fsutil::private;
use crate::store::{DiskStore, layout};

/// The oldest `go` that speaks GOCACHEPROG without an experiment flag.
const GO_MIN: (u32, u32) = (1, 24);
/// Go's variable for experiments; `cacheprog` was one before Go 1.24.
const GOEXPERIMENT: &str = "GOEXPERIMENT";

// --- The Go side ---

/// What `GOCACHEPROG` runs, when it is a warren: its version, and whether
/// it is this very binary.
pub(super) struct Prog {
    pub(super) version: String,
    pub(super) is_me: bool,
}

/// Checks `go` and its `GOCACHEPROG`; returns the warren that runs for
/// `go`, if one does.
pub(super) fn check_go(report: &mut Report) -> Option<Prog> {
    report.section("Go");
    let Some(go) = find_in_path("go") else {
        report.problem(
            "go is not on PATH",
            None,
            Some("install Go 1.24 or later (https://go.dev/dl/) and put its bin/ on PATH".into()),
        );
        return None;
    };
    // Asked with the user's environment: `go` itself says what it refuses.
    let version = match run_go(&go, &["env", "GOVERSION"]) {
        Ok(version) => version,
        Err(said) => {
            if let Some(experiment) = unknown_experiment(&said) {
                refused_experiment(&go, &said, experiment, report);
                return None;
            }
            said
        }
    };
    match parse_go_version(&version) {
        Some(v) if v >= GO_MIN => report.ok(format!("{version} at {}", go.display())),
        Some(_) => report.problem(
            format!("{version} at {} is too old for GOCACHEPROG", go.display()),
            Some("go speaks GOCACHEPROG from Go 1.24 on".into()),
            Some("install Go 1.24 or later (https://go.dev/dl/)".into()),
        ),
        None => report.warning(
            format!("cannot tell the version of {}", go.display()),
            Some(format!("`go env GOVERSION` said {version:?}")),
            None,
        ),
    }
    let me = std::env::current_exe().ok();
    let me_shown = me
        .as_deref()
        .map_or_else(|| "warren".to_owned(), |p| p.display().to_string());
    let set_it = format!("go env -w GOCACHEPROG={me_shown}");
    let prog = run_go(&go, &["env", "GOCACHEPROG"]).unwrap_or_default();
    if prog.is_empty() {
        report.warning(
            "GOCACHEPROG is not set: go uses its own cache unless you set it per command",
            None,
            Some(set_it),
        );
        return None;
    }
    let program = prog.split_whitespace().next().unwrap_or_default();
    let resolved = if program.contains('/') {
        PathBuf::from(program)
    } else if let Some(found) = find_in_path(program) {
        found
    } else {
        report.problem(
            format!("GOCACHEPROG is {prog:?}, which is not on PATH: go commands will fail"),
            None,
            Some(set_it),
        );
        return None;
    };
    let shown = resolved.display();
    if !resolved.exists() {
        report.problem(
            format!("GOCACHEPROG is {prog:?}, and {shown} does not exist: go commands will fail"),
            None,
            Some(set_it),
        );
        return None;
    }
    if !is_executable(&resolved) {
        report.problem(
            format!(
                "GOCACHEPROG runs {shown}, which is not an executable file: go commands will fail"
            ),
            None,
            Some(set_it),
        );
        return None;
    }
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let mine = env!("CARGO_PKG_VERSION");
    if me.as_deref().is_some_and(|me| same(&resolved, me)) {
        report.ok(format!("GOCACHEPROG runs this warren ({prog})"));
        return Some(Prog {
            version: mine.to_owned(),
            is_me: true,
        });
    }
    match gocacheprog::inspect(&resolved) {
        Ok(Program::Warren(version)) => {
            let what = if version == mine {
                format!(
                    "GOCACHEPROG runs warren {version} at {shown}, not this warren ({me_shown})"
                )
            } else {
                format!(
                    "GOCACHEPROG runs warren {version} at {shown}, not this warren {mine} ({me_shown})"
                )
            };
            report.warning(what, None, Some(set_it));
            Some(Prog {
                version,
                is_me: false,
            })
        }
        Ok(Program::Script) => {
            report.warning(
                format!("GOCACHEPROG runs {shown}, a script: cannot tell whether it starts warren"),
                None,
                Some(set_it),
            );
            None
        }
        Ok(Program::NotWarren) => {
            report.problem(
                format!("GOCACHEPROG runs {shown}, which is not warren"),
                Some(
                    "builds do not use warren, and fail unless that program is another \
                     GOCACHEPROG helper"
                        .into(),
                ),
                Some(set_it),
            );
            None
        }
        Err(e) => {
            report.warning(
                format!("GOCACHEPROG runs {shown}, which cannot be read ({e})"),
                None,
                Some(set_it),
            );
            None
        }
    }
}

/// `go` refused `experiment`, named in GOEXPERIMENT: say where it is set
/// and how to drop it.
fn refused_experiment(go: &Path, said: &str, experiment: &str, report: &mut Report) {
    // As go reads the list: a `no` prefix turns an experiment off.
    let names = |name: &str| {
        let name = name.trim();
        name == experiment || name.strip_prefix("no") == Some(experiment)
    };
    let from_env = std::env::var(GOEXPERIMENT)
        .ok()
        .filter(|value| value.split(',').any(names));
    let rest = |value: &str| -> String {
        value
            .split(',')
            .filter(|name| !names(name))
            .collect::<Vec<_>>()
            .join(",")
    };
    let fix = match &from_env {
        Some(value) if rest(value).is_empty() => {
            "unset GOEXPERIMENT (and drop it from your shell profile)".to_owned()
        }
        Some(value) => format!(
            "export GOEXPERIMENT={} (without {experiment}; in your shell profile too)",
            rest(value)
        ),
        // Not in the environment: in go's own env file (`go env -w`),
        // which `go env -u` edits even while go refuses the value.
        None => "go env -u GOEXPERIMENT (it is set in go's env file: `go env GOENV` names it)"
            .to_owned(),
    };
    let cause = if experiment == "cacheprog" {
        "GOCACHEPROG needs no experiment since Go 1.24, and newer go commands no longer \
         know this one; older GOCACHEPROG guides still say to set it"
            .to_owned()
    } else {
        format!("this go has no experiment named {experiment}")
    };
    report.problem(
        format!(
            "{} refuses GOEXPERIMENT={experiment} ({said:?}): every go command fails",
            go.display()
        ),
        Some(cause),
        Some(fix),
    );
}

/// The experiment named by go's `unknown GOEXPERIMENT <name>` error.
fn unknown_experiment(said: &str) -> Option<&str> {
    let (_, rest) = said.split_once("unknown GOEXPERIMENT ")?;
    rest.split_whitespace()
        .next()
        .filter(|name| !name.is_empty())
}

/// `go1.24.3` (or `go1.25rc1`) → (1, 24).
fn parse_go_version(version: &str) -> Option<(u32, u32)> {
    let rest = version.strip_prefix("go")?;
    let mut parts = rest.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| is_executable(path))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `go <args>` with the user's environment: what it printed, or, when it
/// failed, what it said on stderr.
fn run_go(go: &Path, args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new(go)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

// --- The store ---

pub(super) fn check_store(config: &Config, report: &mut Report) {
    report.section("Store");
    let dir = &config.store.dir;
    if !dir.exists() {
        report.ok(format!(
            "{} does not exist yet: the first build through warren creates it",
            dir.display()
        ));
        return;
    }
    match private::check_dir(dir) {
        Ok(()) => report.ok(format!("{}: yours, not writable by others", dir.display())),
        Err(e) => {
            report.problem(
                format!("{} is not private", dir.display()),
                Some(e.to_string()),
                Some(format!(
                    "chmod go-w {0} (if another user owns it, use a store of your own: --dir or WARREN_DIR)",
                    dir.display()
                )),
            );
            return;
        }
    }
    let above = dir
        .canonicalize()
        .map_err(|e| e.to_string())
        .and_then(|dir| private::check_above(&dir).map_err(|e| e.to_string()));
    if let Err(cause) = above {
        report.problem(
            format!("others could replace {}", dir.display()),
            Some(cause),
            Some("keep the store under directories only you and root can write (--dir or WARREN_DIR)".into()),
        );
        return;
    }
    let space = crate::fsutil::space(dir);
    let used = DiskStore::open(dir).and_then(|store| store.usage());
    let max = config.store.max_size.as_u64();
    let size = |n: u64| ByteSize(n).display().iec().to_string();
    match used {
        Ok(usage) if usage.bytes > max => report.warning(
            format!(
                "{} in {} entries, over max-size {}",
                size(usage.bytes),
                usage.entries,
                size(max)
            ),
            Some("a trim runs in the background after builds, at most once an hour".into()),
            Some("warren trim".into()),
        ),
        Ok(usage) => report.ok(format!(
            "{} in {} entries, of max-size {}",
            size(usage.bytes),
            usage.entries,
            size(max)
        )),
        Err(e) => report.problem(
            "cannot read the store",
            Some(crate::logging::chain(&e)),
            Some("warren verify".into()),
        ),
    }
    match space {
        Some(space) if space.free < floor(space.total) => report.warning(
            format!(
                "only {} free on its disk, under the {} that bodies from peers leave free",
                size(space.free),
                size(floor(space.total))
            ),
            Some(
                "bodies from peers are refused until there is room; when the disk is full, \
                 builds go on but are not cached"
                    .into(),
            ),
            Some("free space, or lower max-size and run `warren trim`".into()),
        ),
        Some(space) => report.ok(format!("{} free on its disk", size(space.free))),
        None => {}
    }
    // An flock dies with its process, so a held lock is a live trim.
    match FileLock::try_acquire(&layout::trim_lock(dir)) {
        Ok(Some(_lock)) => report.ok("no trim running; the trim lock is free"),
        Ok(None) => report.ok("a trim is running now"),
        Err(e) => report.warning(
            "cannot check the trim lock",
            Some(crate::logging::chain(&e)),
            None,
        ),
    }
    check_markers(dir, report);
}

/// Writes not yet on disk, and whether a recovery after a crash is
/// pending or running (`store::dirty`, `store::recovery`).
fn check_markers(dir: &Path, report: &mut Report) {
    let counted =
        DiskStore::open(dir).and_then(|store| Ok((store.groups_commits(), store.marker_counts()?)));
    let (grouped, counts) = match counted {
        Ok(counted) => counted,
        Err(e) => {
            report.warning(
                "cannot read the store's dirty markers",
                Some(crate::logging::chain(&e)),
                None,
            );
            return;
        }
    };
    let crashes = counts.crashed;
    if crashes > 0 && counts.sweeping {
        report.warning(
            format!(
                "recovering from a crash now: what {crashes} writer{} left is being verified",
                plural(crashes)
            ),
            Some("until it is done, files changed since the crash are verified before use".into()),
            None,
        );
    } else if crashes > 0 {
        report.warning(
            format!(
                "a recovery after a crash is pending: {crashes} writer{} did not finish syncing",
                plural(crashes)
            ),
            Some(
                "a power loss or crash (or a failed sync) while warren wrote; files changed \
                 since are verified before use until a sweep has seen them all"
                    .into(),
            ),
            Some("warren verify (the next build starts it too)".into()),
        );
    }
    if counts.killed > 0 {
        report.ok(format!(
            "{} writer{} killed before syncing: the next warren process syncs what {} wrote",
            counts.killed,
            plural(counts.killed),
            if counts.killed == 1 { "it" } else { "they" }
        ));
    }
    if counts.live > 0 {
        report.ok(format!(
            "{} warren process{} writing now",
            counts.live,
            if counts.live == 1 { "" } else { "es" }
        ));
    } else if crashes + counts.killed == 0 && grouped {
        report.ok("every write is on disk: no dirty markers");
    } else if crashes + counts.killed == 0 {
        report.ok(
            "what go puts is synced file by file here (no group commit on this system or \
             filesystem); bodies fetched from peers are not synced",
        );
    }
}

// --- Identity and config ---

/// This machine's peer ID, if sharing is on and the key is good.
pub(super) fn check_identity(config: &Config, report: &mut Report) -> Option<Me> {
    report.section("Identity");
    match &config.file {
        Some(file) => report.ok(format!("config {} is valid", file.display())),
        None => report.ok("no config file: the defaults apply"),
    }
    if !config.share.enabled {
        report.ok("sharing is off: warren is a local cache (`warren init` turns sharing on)");
        return None;
    }
    // The file the errors below name: the variable's, else the default.
    let path = std::env::var(crate::config::env::WARREN_IDENTITY_FILE)
        .ok()
        .filter(|path| !path.trim().is_empty())
        .map_or_else(|| config.identity_path(), std::path::PathBuf::from);
    let me = match config.identity() {
        Ok((key, origin)) => {
            let id = identity::peer_id(&key).to_string();
            match origin {
                identity::Origin::File(path) => {
                    report.ok(format!("key {} (owner-only), peer ID {id}", path.display()));
                }
                identity::Origin::Secret => report.ok(format!(
                    "identity from {}, peer ID {id}",
                    crate::config::env::WARREN_IDENTITY
                )),
            }
            Me {
                id,
                name: crate::cli::share::hostname(),
            }
        }
        Err(identity::Error::Missing(_)) => {
            report.problem(
                format!(
                    "sharing is on, but there is no identity key at {}",
                    path.display()
                ),
                None,
                Some("warren init".into()),
            );
            return None;
        }
        Err(e @ identity::Error::Permissions { .. }) => {
            report.problem(
                "the identity key is readable by others",
                Some(e.to_string()),
                Some(format!("chmod 600 {}", path.display())),
            );
            return None;
        }
        Err(e) => {
            report.problem(
                "the identity key cannot be read",
                Some(crate::logging::chain(&e)),
                Some(format!(
                    "move {} aside and run `warren init` (coworkers then add your new ID)",
                    path.display()
                )),
            );
            return None;
        }
    };
    report.ok("sharing is on");
    match Allowlist::load(&config.allowlist_path()) {
        Ok(list) if list.peers.is_empty() => report.warning(
            "no coworker is allowlisted",
            None,
            Some(
                "warren peers add <their peer ID> --name NAME (they get it from `warren id`)"
                    .into(),
            ),
        ),
        Ok(list) => report.ok(format!(
            "{} peer{} allowlisted in {}",
            list.peers.len(),
            plural(list.peers.len()),
            config.allowlist_path().display()
        )),
        Err(e) => report.problem(
            "the allowlist cannot be read",
            Some(crate::logging::chain(&e)),
            Some(format!(
                "correct or remove {}",
                config.allowlist_path().display()
            )),
        ),
    }
    Some(me)
}

pub(super) struct Me {
    pub(super) id: String,
    pub(super) name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_versions_are_read() {
        assert_eq!(parse_go_version("go1.24.3"), Some((1, 24)));
        assert_eq!(parse_go_version("go1.25rc1"), Some((1, 25)));
        assert_eq!(parse_go_version("go1.9"), Some((1, 9)));
        assert_eq!(parse_go_version("devel +abc"), None);
        assert!(parse_go_version("go1.23.9").unwrap() < GO_MIN);
    }

    #[test]
    fn gos_refusal_names_the_experiment() {
        assert_eq!(
            unknown_experiment("go: unknown GOEXPERIMENT cacheprog"),
            Some("cacheprog")
        );
        assert_eq!(
            unknown_experiment("go: unknown GOEXPERIMENT such\n"),
            Some("such")
        );
        assert_eq!(unknown_experiment("go: unknown GOEXPERIMENT "), None);
        assert_eq!(unknown_experiment("go: cannot find GOROOT"), None);
    }
}
