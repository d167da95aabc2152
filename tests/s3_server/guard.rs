//! The guard every test goes through before anything speaks S3: it turns an
//! endpoint and a set of test credentials into the environment of a warren
//! process or an S3 client, and refuses, before any request is made, an
//! endpoint that is not on this machine's loopback or in a network
//! namespace the test made itself.
//!
//! What it keeps out, and why:
//! - a remote endpoint (a cloud's, or any address of the machine's real
//!   network): refused by address; host names are refused too, even
//!   `localhost`, since a name says nothing about where it resolves;
//! - credentials and settings of the machine's user: every `AWS_*` variable
//!   is removed (a profile, a web-identity token file, `AWS_ENDPOINT_URL`,
//!   a container's credentials URI), and HOME is a directory of the test's
//!   own without `~/.aws`, so no credential file is read;
//! - lookups that leave the machine: `AWS_EC2_METADATA_DISABLED=true`
//!   stops the credential chain from asking the instance metadata service;
//! - HTTP proxies (`HTTP_PROXY`, `ALL_PROXY`, … either case): removed, since
//!   a proxy would carry a request to loopback off the machine.

use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One identity of the test server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

/// The environment a guarded process runs with; see [`client_env`].
#[derive(Debug, Clone)]
pub struct ClientEnv {
    endpoint: String,
    home: PathBuf,
    credentials: Credentials,
}

/// Proxy variables that would route a request off the machine.
const PROXY_VARIABLES: [&str; 8] = [
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];

/// The region the test server is signed for (SeaweedFS accepts any).
pub const REGION: &str = "us-east-1";

/// Checks `endpoint` (panicking, before anything is sent, unless it is on
/// loopback or is one of `namespaces`, the addresses of the test's own
/// network namespaces) and returns the environment for a process that
/// speaks to it with `credentials`, with `home` as its HOME.
pub fn client_env(
    endpoint: Option<&str>,
    namespaces: &[IpAddr],
    credentials: &Credentials,
    home: &Path,
) -> ClientEnv {
    let endpoint = check_endpoint(endpoint, namespaces);
    assert!(
        !home.join(".aws").exists(),
        "refusing a HOME with AWS files in it ({}): a test's HOME is its own",
        home.display()
    );
    ClientEnv {
        endpoint: endpoint.to_owned(),
        home: home.to_owned(),
        credentials: credentials.clone(),
    }
}

/// The endpoint's address, when it is local; panics otherwise.
pub fn check_endpoint<'a>(endpoint: Option<&'a str>, namespaces: &[IpAddr]) -> &'a str {
    let Some(endpoint) = endpoint.filter(|e| !e.trim().is_empty()) else {
        panic!("refusing to run without an S3 endpoint: a test names the server it started");
    };
    match local_address(endpoint, namespaces) {
        Ok(_) => endpoint,
        Err(why) => panic!(
            "refusing S3 endpoint {endpoint:?}: {why}; tests speak only to a server they \
             started, on loopback or in a network namespace of their own"
        ),
    }
}

/// The address `endpoint` (`http[s]://<ip>[:port][/…]`) names, if it is
/// loopback or one of `namespaces`.
fn local_address(endpoint: &str, namespaces: &[IpAddr]) -> Result<IpAddr, String> {
    let rest = (endpoint.strip_prefix("http://"))
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or("not an http:// or https:// URL")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err("it carries user information".into());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or("an unclosed [")?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(port) if port > 0 => {}
            _ => return Err(format!("bad port {port:?}")),
        }
    }
    let address: IpAddr = host
        .parse()
        .map_err(|_| format!("{host:?} is not an IP address (names are not resolved)"))?;
    // Only the canonical spelling: a client must not read the text as
    // another address than this check did (octal, zero-padded, mapped).
    if address.to_string() != host {
        return Err(format!("{host:?} is not written as {address}"));
    }
    let loopback = match address {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
    };
    if loopback || namespaces.contains(&address) {
        Ok(address)
    } else {
        Err(format!(
            "{address} is neither loopback nor an address of the test's own namespaces"
        ))
    }
}

fn is_guarded(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    name.to_ascii_uppercase().starts_with("AWS_") || PROXY_VARIABLES.contains(&name.as_ref())
}

impl ClientEnv {
    /// The endpoint, checked.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The variables this environment sets.
    pub fn vars(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("HOME", self.home.clone().into_os_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_ACCESS_KEY_ID", (&self.credentials.access_key).into()),
            (
                "AWS_SECRET_ACCESS_KEY",
                (&self.credentials.secret_key).into(),
            ),
        ]
    }

    /// Removes from `command` every `AWS_*` and proxy variable it would
    /// inherit or was given, then sets [`ClientEnv::vars`].
    pub fn apply<'c>(&self, command: &'c mut Command) -> &'c mut Command {
        let mut remove: Vec<OsString> = (std::env::vars_os().map(|(name, _)| name))
            .filter(|name| is_guarded(name))
            .collect();
        remove.extend(
            (command.get_envs())
                .filter(|(name, _)| is_guarded(name))
                .map(|(name, _)| name.to_owned()),
        );
        for name in remove {
            command.env_remove(name);
        }
        command.envs(self.vars())
    }
}
