//! Cheap consistency checks on shared entries, from what Go itself records.
//!
//! Verification proves a body is the one its OutputID names, not that the
//! OutputID is right for the ActionID. Two kinds of entries say more about
//! themselves, and Go's source says how to read it:
//!
//! - A compiled package (an archive, `!<arch>\n`) carries its build ID in
//!   the header of its first member (`go object …\nbuild id "…"\n`), and
//!   for the cache entry of a compile action that build ID begins with the
//!   action ID itself, encoded as `buildid.HashToString` does: the first
//!   15 bytes in URL-safe base64 (`cmd/go/internal/work/buildid.go`,
//!   `updateBuildID` stores the archive under `a.actionID`, and `useCache`
//!   names it `HashToString(actionHash)/…`). An archive fetched under a
//!   different ActionID is refused. That catches accidental mismatches (a
//!   forked toolchain stamping the same version), not a forger, who can
//!   write any build ID.
//! - A module index (`go index v…`, `cmd/go/internal/modindex`) describes
//!   directories on the machine that made it; it cannot be checked, and a
//!   wrong one breaks the build. Such entries are neither served nor taken
//!   from peers.

use base64::Engine as _;

use crate::ids::ActionId;

/// How much of a body the checks read.
pub(crate) const HEAD: usize = 1024;

/// What a body's first bytes say it is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Kind<'a> {
    /// A Go archive with this build ID.
    Archive { build_id: &'a str },
    /// A module index: machine-specific.
    ModuleIndex,
    /// Anything else (objects without a build ID line, test output, …).
    Other,
}

/// Reads the kind of a body from its first [`HEAD`] bytes.
pub(crate) fn kind(head: &[u8]) -> Kind<'_> {
    if head.starts_with(b"go index v") {
        return Kind::ModuleIndex;
    }
    let mut lines = head.split(|byte| *byte == b'\n');
    let archive = lines.next() == Some(b"!<arch>")
        && lines
            .next()
            .is_some_and(|line| line.starts_with(b"__.PKGDEF"))
        && lines
            .next()
            .is_some_and(|line| line.starts_with(b"go object "));
    if !archive {
        return Kind::Other;
    }
    let build_id = lines
        .next()
        .and_then(|line| line.strip_prefix(b"build id \""))
        .and_then(|rest| rest.strip_suffix(b"\""))
        .and_then(|id| std::str::from_utf8(id).ok());
    match build_id {
        Some(build_id) => Kind::Archive { build_id },
        None => Kind::Other,
    }
}

/// How Go writes an action ID into a build ID.
pub(crate) fn hash_to_string(action: &ActionId) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&action.as_bytes()[..15])
}

/// Why a body fetched for `action` must not be stored, if it must not.
pub(crate) fn refuse_fetched(action: &ActionId, head: &[u8]) -> Option<String> {
    match kind(head) {
        Kind::ModuleIndex => Some("a module index (machine-specific; never shared)".into()),
        Kind::Archive { build_id } => {
            let built_as = build_id.split('/').next().unwrap_or_default();
            let expected = hash_to_string(action);
            (built_as != expected)
                .then(|| format!("an archive built by action {built_as}…, served for {expected}…"))
        }
        Kind::Other => None,
    }
}

/// Whether an entry whose body begins with `head` may be served to peers.
pub(crate) fn servable(head: &[u8]) -> bool {
    kind(head) != Kind::ModuleIndex
}

/// What the checks find in a store, for `warren verify`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Census {
    pub entries: u64,
    /// Archives whose build ID names their own action.
    pub archives: u64,
    /// Archives whose build ID names another action (never from a peer:
    /// those are refused).
    pub foreign_archives: u64,
    pub module_indexes: u64,
}

impl Census {
    pub(crate) fn of(store: &crate::store::DiskStore) -> Result<Self, crate::store::Error> {
        let mut census = Self::default();
        store.each_entry_head(HEAD, &mut |action, head| {
            census.entries += 1;
            match kind(head) {
                Kind::ModuleIndex => census.module_indexes += 1,
                Kind::Archive { .. } if refuse_fetched(action, head).is_some() => {
                    census.foreign_archives += 1;
                }
                Kind::Archive { .. } => census.archives += 1,
                Kind::Other => {}
            }
        })?;
        Ok(census)
    }
}

impl std::fmt::Display for Census {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} entries: {} archives whose build ID names their action, {} that name another, {} module indexes (never shared)",
            self.entries, self.archives, self.foreign_archives, self.module_indexes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(build_id: &str) -> Vec<u8> {
        format!(
            "!<arch>\n__.PKGDEF       0           0     0     644     7955      `\ngo object linux amd64 go1.26.6 X:none\nbuild id \"{build_id}\"\n----\n"
        )
        .into_bytes()
    }

    #[test]
    fn archives_must_carry_their_own_action_id() {
        let action = ActionId::from_bytes([0xfb; 32]);
        // 0xfb 0xfb 0xfb = 111110 111111 101111 111011 → "-_v7".
        assert_eq!(hash_to_string(&action), "-_v7-_v7-_v7-_v7-_v7");
        let good = archive("-_v7-_v7-_v7-_v7-_v7/contentcontentconte");
        assert_eq!(refuse_fetched(&action, &good), None);
        let other = ActionId::from_bytes([1; 32]);
        assert!(refuse_fetched(&other, &good).is_some());
        // Not an archive of ours to judge: anything else passes.
        assert_eq!(refuse_fetched(&other, b"plain test output"), None);
        assert_eq!(
            kind(b"!<arch>\n__.PKGDEF x\ngo object y\nno build id here\n"),
            Kind::Other
        );
    }

    #[test]
    fn module_indexes_are_never_shared() {
        let index = b"go index v2\n\0\0\0\x01rest";
        assert_eq!(kind(index), Kind::ModuleIndex);
        assert!(!servable(index));
        assert!(refuse_fetched(&ActionId::from_bytes([1; 32]), index).is_some());
        assert!(servable(&archive("a/b")));
    }
}
