//! The types of settings: how the config file writes each, how a flag or a
//! variable does, and how `warren config` shows it.
//!
//! Sizes are [`ByteSize`] (`10 GiB`, `500 MB`, `1048576`) and durations
//! humantime's (`7days`, `36h`, `150ms`), the same text in the file, a flag
//! or a variable, parsed by one function per type. In the file they are
//! strings: a bare number is refused, as a typo like `max-size = 10` (bytes)
//! would be. A bad value names its type and the text; toml's message around
//! it shows the line, and [`Error::Value`](super::Error::Value) names the
//! flag or variable.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Deserializer};
use warren_p2p::Compression;

/// A setting's type.
pub(crate) trait Value: Sized {
    /// Reads it from the config file.
    fn from_file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error>;
    /// As `warren config` shows it.
    fn show(&self) -> String;
}

/// A setting's type that a flag or a variable gives, too.
pub(crate) trait FromArg: Sized {
    /// What clap checks before warren sees the text; most types take any
    /// text and say what is wrong with it themselves.
    fn value_parser() -> clap::builder::ValueParser {
        clap::builder::ValueParser::os_string()
    }
    /// Parses the text of the flag or variable; the reason if it is bad.
    fn from_arg(text: &OsStr) -> Result<Self, String>;
}

/// The field attribute of the file's tables: a key that is there holds a
/// value of its setting's type.
pub(crate) fn from_file<'de, D: Deserializer<'de>, T: Value>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::from_file(deserializer).map(Some)
}

/// A value the file writes as a string, parsed as a flag's would be.
fn text<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    what: &str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse(&text)
        .map_err(|reason| serde::de::Error::custom(format!("invalid {what} {text:?}: {reason}")))
}

fn utf8(text: &OsStr) -> Result<&str, String> {
    text.to_str().ok_or_else(|| "not valid UTF-8".to_owned())
}

impl Value for bool {
    fn from_file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::deserialize(deserializer)
    }
    fn show(&self) -> String {
        if *self { "on" } else { "off" }.to_owned()
    }
}

impl FromArg for bool {
    /// `on`/`off`, `yes`/`no`, `1`/`0` and the like, checked by clap.
    fn value_parser() -> clap::builder::ValueParser {
        clap::builder::BoolishValueParser::new().into()
    }
    fn from_arg(text: &OsStr) -> Result<Self, String> {
        use clap::builder::TypedValueParser as _;
        clap::builder::BoolishValueParser::new()
            .parse_ref(&clap::Command::new("warren"), None, text)
            .map_err(|_| "write on or off".to_owned())
    }
}

impl Value for usize {
    fn from_file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::deserialize(deserializer)
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Value for PathBuf {
    fn from_file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::deserialize(deserializer)
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
}

impl FromArg for PathBuf {
    fn from_arg(text: &OsStr) -> Result<Self, String> {
        Ok(text.into())
    }
}

/// A list of names or addresses; "none" when empty.
impl Value for Vec<String> {
    fn from_file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::deserialize(deserializer)
    }
    fn show(&self) -> String {
        list_or(self, "none")
    }
}

/// `items` one after the other, or `empty`.
pub(crate) fn list_or(items: &[String], empty: &str) -> String {
    if items.is_empty() {
        empty.to_owned()
    } else {
        items.join(" ")
    }
}

impl Value for ByteSize {
    fn from_file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        text(deserializer, "size", parse_size)
    }
    fn show(&self) -> String {
        self.display().iec().to_string()
    }
}

impl FromArg for ByteSize {
    fn from_arg(text: &OsStr) -> Result<Self, String> {
        utf8(text).and_then(parse_size)
    }
}

/// Parses sizes such as `10GiB`, `500 MB` or `1048576`.
pub(crate) fn parse_size(text: &str) -> Result<ByteSize, String> {
    text.trim().parse()
}

impl Value for Duration {
    fn from_file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        text(deserializer, "duration", parse_age)
    }
    fn show(&self) -> String {
        humantime::format_duration(*self).to_string()
    }
}

impl FromArg for Duration {
    fn from_arg(text: &OsStr) -> Result<Self, String> {
        utf8(text).and_then(parse_age)
    }
}

/// Parses durations such as `7days`, `36h` or `1w`.
pub(crate) fn parse_age(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| e.to_string())
}

/// Bytes a second: `40 MiB/s`, or `40MiB` (per second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate(pub ByteSize);

impl Rate {
    pub(crate) fn bytes_per_second(self) -> u64 {
        self.0.as_u64()
    }
}

impl Value for Rate {
    fn from_file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        text(deserializer, "replicate-rate", parse_rate)
    }
    fn show(&self) -> String {
        format!("{}/s", self.0.show())
    }
}

/// A rate such as `40 MiB/s` or `40MiB` (per second), at least 1 KiB/s.
pub(crate) fn parse_rate(text: &str) -> Result<Rate, String> {
    let rate = parse_size(text.trim().trim_end_matches("/s"))?;
    if rate.as_u64() < 1024 {
        return Err("at least 1 KiB/s".into());
    }
    Ok(Rate(rate))
}

/// A rate, or none: no cap.
impl Value for Option<Rate> {
    fn from_file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        text(deserializer, "rate", parse_rate).map(Some)
    }
    fn show(&self) -> String {
        match self {
            Some(rate) => rate.show(),
            None => "no cap".to_owned(),
        }
    }
}

/// An address to listen on, or none: off.
impl Value for Option<SocketAddr> {
    fn from_file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        text(deserializer, "metrics-listen", parse_listen).map(Some)
    }
    fn show(&self) -> String {
        match self {
            Some(address) => address.to_string(),
            None => "off".to_owned(),
        }
    }
}

/// `127.0.0.1:9311`, `[::1]:9311`, or a bare port, which means loopback.
pub(crate) fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok((std::net::Ipv4Addr::LOCALHOST, port).into());
    }
    text.parse().map_err(|e: std::net::AddrParseError| {
        format!("{e} (write an address and port, like 127.0.0.1:9311, or a port)")
    })
}

/// `auto`, `always` or `never`.
impl Value for Compression {
    fn from_file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::deserialize(deserializer)
    }
    fn show(&self) -> String {
        format!("{self:?}").to_lowercase()
    }
}

/// Whose new entries the daemon fetches in the background (`replicate`):
/// `"none"`, `"all"` allowlisted peers it pulls from, or a list of peers by
/// name (or peer ID) in the allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Replicate {
    #[default]
    None,
    All,
    Peers(Vec<String>),
}

impl<'de> Deserialize<'de> for Replicate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            Names(Vec<String>),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Word(word) if word == "none" => Ok(Self::None),
            Raw::Word(word) if word == "all" => Ok(Self::All),
            Raw::Word(word) => Err(serde::de::Error::custom(format!(
                "replicate = {word:?}: write \"none\", \"all\" or a list of peer names, \
                 like [\"alice\", \"bob\"]"
            ))),
            Raw::Names(names) => Ok(Self::Peers(names)),
        }
    }
}

impl std::fmt::Display for Replicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::All => f.write_str("all"),
            Self::Peers(names) => f.write_str(&names.join(" ")),
        }
    }
}

impl Value for Replicate {
    fn from_file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::deserialize(deserializer)
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// A team bucket's `url`: `s3://BUCKET[/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BucketUrl {
    pub bucket: String,
    /// Without leading or trailing slashes; may be empty.
    pub prefix: String,
}

impl std::fmt::Display for BucketUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.prefix.as_str() {
            "" => write!(f, "s3://{}", self.bucket),
            prefix => write!(f, "s3://{}/{prefix}", self.bucket),
        }
    }
}

/// `s3://BUCKET[/PREFIX]`, with a bucket name S3 allows.
pub(crate) fn parse_bucket_url(text: &str) -> Result<BucketUrl, String> {
    let bad = || "write s3://BUCKET or s3://BUCKET/PREFIX".to_owned();
    let rest = text.strip_prefix("s3://").ok_or_else(bad)?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.');
    if bucket.len() < 3 || bucket.len() > 63 || !bucket.chars().all(valid) {
        return Err(bad());
    }
    Ok(BucketUrl {
        bucket: bucket.to_owned(),
        prefix: prefix.trim_matches('/').to_owned(),
    })
}

/// A bucket, or none: off.
impl Value for Option<BucketUrl> {
    fn from_file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        text(deserializer, "url", parse_bucket_url).map(Some)
    }
    fn show(&self) -> String {
        match self {
            Some(url) => url.to_string(),
            None => "off".to_owned(),
        }
    }
}

/// Text as written.
impl Value for Option<String> {
    fn from_file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Some)
    }
    fn show(&self) -> String {
        self.clone().unwrap_or_default()
    }
}
