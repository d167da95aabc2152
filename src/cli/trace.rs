//! `warren trace` (also `warren why`): what the lookups of the last build,
//! or of one ActionID, came to, from the daemon's ring (`daemon::trace`).
//!
//! The default answers "why did this build not use Bob's outputs?": totals
//! per outcome, with the peers involved by their allowlist names.
//! `--lookups` lists every lookup, and an ActionID shows each time any
//! recent build looked it up.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use serde::Serialize;

use crate::config::Config;
use crate::config::trust::Allowlist;
use crate::ids::ActionId;
use crate::ipc;
use crate::ipc::trace::{Build, Kind, Lookup};

/// How long `warren trace` waits for the daemon.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What to show.
pub(super) struct Query {
    pub action: Option<String>,
    /// The build's number, as `warren trace --builds` lists them.
    pub build: Option<u64>,
    pub builds: bool,
    pub lookups: bool,
    pub json: bool,
}

pub(super) fn trace(
    config: &Config,
    query: Query,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let builds = match super::ask_daemon(config, &ipc::Request::Trace, TIMEOUT) {
        Ok(ipc::Response::Trace { builds }) => builds,
        Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        Err(e) => {
            return Err(e).context(
                "the lookup trace lives in the daemon, and none answered; \
                 start it with `warren daemon` (run `warren doctor` to see why)",
            );
        }
    };
    let names = Allowlist::load(&config.allowlist_path()).unwrap_or_default();
    if query.builds {
        return list_builds(&builds, query.json, out);
    }
    if let Some(action) = &query.action {
        return show_action(&builds, action, &names, query.json, out);
    }
    let build = match query.build {
        Some(number) => builds
            .iter()
            .find(|b| b.number == number)
            .with_context(|| {
                format!("no build {number} in the trace (`warren trace --builds` lists them)")
            })?,
        None => match builds.last() {
            Some(build) => build,
            None => {
                writeln!(
                    out,
                    "no build traced yet: the daemon keeps the lookups of go commands run \
                     since it started"
                )?;
                return Ok(ExitCode::SUCCESS);
            }
        },
    };
    if query.json {
        serde_json::to_writer_pretty(&mut *out, &BuildJson::of(build, &names))?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    show_build(build, &names, query.lookups, out)?;
    Ok(ExitCode::SUCCESS)
}

/// What to call `peer`: its allowlist name, else its ID.
fn name(names: &Allowlist, peer: &warren_p2p::PeerId) -> String {
    names
        .name_of(peer)
        .map_or_else(|| peer.to_string(), str::to_owned)
}

/// A lookup in words, its peer by allowlist name.
fn describe(names: &Allowlist, lookup: &Lookup) -> String {
    let peer = lookup.outcome.peer().map(|peer| name(names, &peer));
    let kind = lookup.outcome.kind();
    let mut text = kind.describe(peer.as_deref());
    if kind == Kind::PeerHit
        && let Some(ms) = lookup.ms
    {
        text.push_str(&format!(" in {ms} ms"));
    }
    text
}

fn show_build(
    build: &Build,
    names: &Allowlist,
    lookups: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let seconds = build.ended_unix_ms.saturating_sub(build.started_unix_ms) as f64 / 1000.0;
    writeln!(
        out,
        "build {}: {} ({:.1} s, {} gets{})",
        build.number,
        if build.command.is_empty() {
            "go"
        } else {
            &build.command
        },
        seconds,
        build.gets,
        if (build.lookups.len() as u64) < build.gets {
            format!(", the last {} traced", build.lookups.len())
        } else {
            String::new()
        }
    )?;
    for (kind, count) in build.totals() {
        let by_peer = peers_of(build, kind, names);
        writeln!(out, "  {count:>6}  {}{by_peer}", kind.label())?;
    }
    if lookups {
        for lookup in &build.lookups {
            writeln!(out, "  {}  {}", lookup.action, describe(names, lookup))?;
        }
    }
    Ok(())
}

/// "  (bob 700, carol 52; median 3 ms)" for outcomes that name peers.
fn peers_of(build: &Build, kind: Kind, names: &Allowlist) -> String {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut waits: Vec<f64> = Vec::new();
    for lookup in (build.lookups.iter()).filter(|lookup| lookup.outcome.kind() == kind) {
        if let Some(peer) = lookup.outcome.peer() {
            *counts.entry(name(names, &peer)).or_default() += 1;
        }
        if kind == Kind::PeerHit
            && let Some(ms) = lookup.ms
        {
            waits.push(ms);
        }
    }
    let mut parts: Vec<String> = counts
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    if !waits.is_empty() {
        waits.sort_by(f64::total_cmp);
        parts.push(format!("median {} ms", waits[waits.len() / 2]));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("  ({})", parts.join(", "))
    }
}

fn show_action(
    builds: &[Build],
    action: &str,
    names: &Allowlist,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let action = action.to_ascii_lowercase();
    let action = ActionId::from_hex(&action)
        .map_err(|e| anyhow::anyhow!("{action:?} is not an ActionID: {e}"))?;
    let seen: Vec<(&Build, &Lookup)> = builds
        .iter()
        .flat_map(|build| build.lookups.iter().map(move |lookup| (build, lookup)))
        .filter(|(_, lookup)| lookup.action == action)
        .collect();
    if json {
        let seen: Vec<_> = seen
            .iter()
            .map(|(build, lookup)| ActionJson {
                build: build.number,
                command: &build.command,
                lookup: LookupJson::of(lookup, names),
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &seen)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if seen.is_empty() {
        writeln!(
            out,
            "{action}: not looked up by any build in the trace (it holds the last {} lookups)",
            crate::ipc::trace::CAPACITY
        )?;
    }
    for (build, lookup) in seen {
        writeln!(
            out,
            "build {} ({}): {}",
            build.number,
            build.command,
            describe(names, lookup)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn list_builds(builds: &[Build], json: bool, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    if json {
        let list: Vec<_> = builds
            .iter()
            .map(|build| {
                serde_json::json!({
                    "build": build.number,
                    "command": build.command,
                    "pid": build.pid,
                    "started_unix_ms": build.started_unix_ms,
                    "gets": build.gets,
                    "traced": build.lookups.len(),
                })
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &list)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    for build in builds {
        let hits = (build.lookups.iter())
            .filter(|lookup| lookup.outcome.is_hit())
            .count();
        writeln!(
            out,
            "build {:>4}  {:>6} gets  {:>6} hits  {}",
            build.number, build.gets, hits, build.command
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct BuildJson<'a> {
    build: u64,
    command: &'a str,
    pid: u32,
    started_unix_ms: u64,
    ended_unix_ms: u64,
    gets: u64,
    /// Lookups per outcome.
    totals: BTreeMap<Kind, u64>,
    lookups: Vec<LookupJson>,
}

impl<'a> BuildJson<'a> {
    fn of(build: &'a Build, names: &Allowlist) -> Self {
        Self {
            build: build.number,
            command: &build.command,
            pid: build.pid,
            started_unix_ms: build.started_unix_ms,
            ended_unix_ms: build.ended_unix_ms,
            gets: build.gets,
            totals: build.totals().into_iter().collect(),
            lookups: build
                .lookups
                .iter()
                .map(|lookup| LookupJson::of(lookup, names))
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct LookupJson {
    action: ActionId,
    outcome: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<warren_p2p::PeerId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ms: Option<f64>,
}

impl LookupJson {
    fn of(lookup: &Lookup, names: &Allowlist) -> Self {
        let peer = lookup.outcome.peer();
        Self {
            action: lookup.action,
            outcome: lookup.outcome.kind(),
            peer,
            peer_name: peer
                .and_then(|peer| {
                    names
                        .name_of(&peer)
                        .filter(|name| *name != peer.to_string())
                })
                .map(str::to_owned),
            ms: lookup.ms,
        }
    }
}

#[derive(Serialize)]
struct ActionJson<'a> {
    build: u64,
    command: &'a str,
    #[serde(flatten)]
    lookup: LookupJson,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(seed: u8) -> String {
        libp2p_identity::Keypair::ed25519_from_bytes([seed; 32])
            .unwrap()
            .public()
            .to_peer_id()
            .to_string()
    }

    /// A build as a helper reports it (its JSON), and what `warren trace`
    /// makes of it, in words and as JSON.
    fn rendered() -> (String, String, String) {
        let (bob, carol) = (peer(7), peer(8));
        let names: Allowlist =
            toml::from_str(&format!("[[peer]]\nid = \"{bob}\"\nname = \"bob\"\n")).unwrap();
        let action = |n: u8| format!("{n:02x}").repeat(32);
        let json = format!(
            r#"{{"number":3,"command":"go build ./...","pid":7,"started_unix_ms":1000,"ended_unix_ms":3500,"gets":6,"lookups":[
            {{"action":"{}","outcome":"peer_hit","peer":"{bob}","ms":2.5}},
            {{"action":"{}","outcome":"read_ahead_hit","peer":"{carol}"}},
            {{"action":"{}","outcome":"cooldown","peer":"{carol}","ms":150.0}},
            {{"action":"{}","outcome":"not_in_summaries","ms":0.3}},
            {{"action":"{}","outcome":"peer_hit","peer":"{bob}","ms":1.5}},
            {{"action":"{}","outcome":"local_hit"}}]}}"#,
            action(1),
            action(2),
            action(3),
            action(4),
            action(5),
            action(6)
        );
        let build: Build = serde_json::from_str(&json).unwrap();
        let mut words = Vec::new();
        show_build(&build, &names, true, &mut words).unwrap();
        let mut one = Vec::new();
        show_action(
            std::slice::from_ref(&build),
            &action(3).to_uppercase(),
            &names,
            false,
            &mut one,
        )
        .unwrap();
        words.extend(one);
        let json = serde_json::to_string_pretty(&BuildJson::of(&build, &names)).unwrap();
        let mut actions = Vec::new();
        show_action(
            std::slice::from_ref(&build),
            &action(1),
            &names,
            true,
            &mut actions,
        )
        .unwrap();
        (
            String::from_utf8(words).unwrap(),
            json,
            String::from_utf8(actions).unwrap(),
        )
    }

    /// `warren trace` prints what it did before outcomes carried their
    /// peers and reasons typed: the totals with peers by name, each
    /// lookup, one action's history, and the JSON of both.
    #[test]
    fn a_build_reads_as_it_did() {
        let (words, json, actions) = rendered();
        assert_eq!(words, WORDS);
        assert_eq!(json, JSON);
        assert_eq!(actions, ACTIONS);
    }

    const WORDS: &str = r#"build 3: go build ./... (2.5 s, 6 gets)
       1  local hit
       1  read-ahead hit  (12D3KooWB8sCGZCrwr79HtabLAn95qyPQx6RYHXjEbiD6QKou7ww 1)
       2  peer hit  (bob 2, median 2.5 ms)
       1  miss: no peer's summary holds it
       1  miss: peer in cooldown  (12D3KooWB8sCGZCrwr79HtabLAn95qyPQx6RYHXjEbiD6QKou7ww 1)
  0101010101010101010101010101010101010101010101010101010101010101  peer hit from bob in 2.5 ms
  0202020202020202020202020202020202020202020202020202020202020202  read-ahead hit from 12D3KooWB8sCGZCrwr79HtabLAn95qyPQx6RYHXjEbiD6QKou7ww
  0303030303030303030303030303030303030303030303030303030303030303  miss: 12D3KooWB8sCGZCrwr79HtabLAn95qyPQx6RYHXjEbiD6QKou7ww in cooldown
  0404040404040404040404040404040404040404040404040404040404040404  miss: no peer's summary holds it
  0505050505050505050505050505050505050505050505050505050505050505  peer hit from bob in 1.5 ms
  0606060606060606060606060606060606060606060606060606060606060606  local hit
build 3 (go build ./...): miss: 12D3KooWB8sCGZCrwr79HtabLAn95qyPQx6RYHXjEbiD6QKou7ww in cooldown
"#;

    const JSON: &str = r#"{
  "build": 3,
  "command": "go build ./...",
  "pid": 7,
  "started_unix_ms": 1000,
  "ended_unix_ms": 3500,
  "gets": 6,
  "totals": {
    "local_hit": 1,
    "read_ahead_hit": 1,
    "peer_hit": 2,
    "not_in_summaries": 1,
    "cooldown": 1
  },
  "lookups": [
    {
      "action": "0101010101010101010101010101010101010101010101010101010101010101",
      "outcome": "peer_hit",
      "peer": "12D3KooWRawPbxPtP1eZaJpumGnyWX2DcUyd3RQnydr3eAto4Az7",
      "peer_name": "bob",
      "ms": 2.5
    },
    {
      "action": "0202020202020202020202020202020202020202020202020202020202020202",
      "outcome": "read_ahead_hit",
      "peer": "12D3KooWB8sCGZCrwr79HtabLAn95qyPQx6RYHXjEbiD6QKou7ww"
    },
    {
      "action": "0303030303030303030303030303030303030303030303030303030303030303",
      "outcome": "cooldown",
      "peer": "12D3KooWB8sCGZCrwr79HtabLAn95qyPQx6RYHXjEbiD6QKou7ww",
      "ms": 150.0
    },
    {
      "action": "0404040404040404040404040404040404040404040404040404040404040404",
      "outcome": "not_in_summaries",
      "ms": 0.3
    },
    {
      "action": "0505050505050505050505050505050505050505050505050505050505050505",
      "outcome": "peer_hit",
      "peer": "12D3KooWRawPbxPtP1eZaJpumGnyWX2DcUyd3RQnydr3eAto4Az7",
      "peer_name": "bob",
      "ms": 1.5
    },
    {
      "action": "0606060606060606060606060606060606060606060606060606060606060606",
      "outcome": "local_hit"
    }
  ]
}"#;

    const ACTIONS: &str = r#"[
  {
    "build": 3,
    "command": "go build ./...",
    "action": "0101010101010101010101010101010101010101010101010101010101010101",
    "outcome": "peer_hit",
    "peer": "12D3KooWRawPbxPtP1eZaJpumGnyWX2DcUyd3RQnydr3eAto4Az7",
    "peer_name": "bob",
    "ms": 2.5
  }
]
"#;
}
