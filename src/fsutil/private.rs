//! "Is this mine alone?": the check warren makes before it trusts a
//! directory, like ssh's `StrictModes`.
//!
//! A directory another user owns, or one other users can write, lets them
//! plant files in it: in the store, entries whose bodies `go` would link
//! into your binaries (reads do not re-hash bodies), or a socket of their
//! own where the daemon's should be. So warren refuses such a directory
//! with one line that says what to fix, and never follows a symbolic link
//! where one of its own directories should be.
//!
//! The directories above one matter as much: whoever can write the parent
//! can rename the store away and put one of their own in its place, and
//! warren works by path. So every directory above it must belong to this
//! user or root, and be writable by nobody else, unless it is sticky (as
//! `/tmp` is: there only an entry's owner may rename it), as ssh checks the
//! path to `authorized_keys`.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Why a path is not this user's alone.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotPrivate {
    #[error(
        "{} belongs to uid {owner}, not to you (uid {me}): remove it, or use another directory",
        path.display()
    )]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "{} can be written by other users (mode {mode:03o}): run `chmod go-w {}`",
        path.display(),
        path.display()
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error(
        "{} is a symbolic link where warren expects a directory of its own: replace it with a directory",
        path.display()
    )]
    Link { path: PathBuf },
    #[error("{} is not a directory", path.display())]
    NotDirectory { path: PathBuf },
    #[error(
        "{}, above the store, belongs to uid {owner}, neither you (uid {me}) nor root, \
         who could replace the store: use a directory of your own",
        path.display()
    )]
    AboveOwner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "{}, above the store, can be written by other users (mode {mode:03o}), who could \
         replace the store: run `chmod go-w {}` (or `chmod +t` on a shared directory), \
         or use another directory",
        path.display(),
        path.display()
    )]
    AboveWritable { path: PathBuf, mode: u32 },
    #[error("checking {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The effective user ID of this process.
pub(crate) fn my_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Checks that the directory at `path` (not followed, if it is a link) is
/// owned by this user and not writable by group or others.
pub(crate) fn check_dir(path: &Path) -> Result<(), NotPrivate> {
    let meta = fs::symlink_metadata(path).map_err(|source| NotPrivate::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file_type = meta.file_type();
    if file_type.is_symlink() {
        return Err(NotPrivate::Link {
            path: path.to_path_buf(),
        });
    }
    if !file_type.is_dir() {
        return Err(NotPrivate::NotDirectory {
            path: path.to_path_buf(),
        });
    }
    check_owner_and_mode(path, &meta)
}

fn check_owner_and_mode(path: &Path, meta: &fs::Metadata) -> Result<(), NotPrivate> {
    let me = my_uid();
    if meta.uid() != me {
        return Err(NotPrivate::Owner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(NotPrivate::Writable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Checks every directory above `path` (which must be absolute, with no
/// links in it: a canonical path): each must belong to this user or root,
/// and others may write it only if it is sticky. See the module docs.
pub(crate) fn check_above(path: &Path) -> Result<(), NotPrivate> {
    let me = my_uid();
    for dir in path.ancestors().skip(1) {
        let meta = fs::symlink_metadata(dir).map_err(|source| NotPrivate::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        if meta.file_type().is_symlink() {
            return Err(NotPrivate::Link {
                path: dir.to_path_buf(),
            });
        }
        if meta.uid() != me && meta.uid() != 0 {
            return Err(NotPrivate::AboveOwner {
                path: dir.to_path_buf(),
                owner: meta.uid(),
                me,
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 && mode & STICKY == 0 {
            return Err(NotPrivate::AboveWritable {
                path: dir.to_path_buf(),
                mode,
            });
        }
    }
    Ok(())
}

/// The sticky bit: in such a directory only an entry's owner (or the
/// directory's, or root) may rename or remove it.
const STICKY: u32 = 0o1000;

/// Checks that the file at `path` (links followed: dotfiles are often
/// links) and the directory it is in are this user's or root's, and not
/// writable by group or others: a config or allowlist that someone else
/// can edit decides whom we trust.
pub(crate) fn check_file(path: &Path) -> Result<(), NotPrivate> {
    let io = |source| NotPrivate::Io {
        path: path.to_path_buf(),
        source,
    };
    let target = fs::canonicalize(path).map_err(io)?;
    let meta = fs::metadata(&target).map_err(io)?;
    check_trusted_owner_and_mode(&target, &meta)?;
    if let Some(dir) = target.parent() {
        let meta = fs::metadata(dir).map_err(|source| NotPrivate::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        check_trusted_owner_and_mode(dir, &meta)?;
    }
    Ok(())
}

/// Like [`check_owner_and_mode`], but root may own it too (a system-wide
/// config that only root can change).
fn check_trusted_owner_and_mode(path: &Path, meta: &fs::Metadata) -> Result<(), NotPrivate> {
    if meta.uid() == 0 && meta.mode() & 0o022 == 0 {
        return Ok(());
    }
    check_owner_and_mode(path, meta)
}

/// Creates `path` and any missing parents, owner-only (0700) whatever the
/// umask; existing directories are left as they are.
pub(crate) fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn own_private_directories_pass_and_others_are_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("mine");
        create_dir_all(&mine.join("deep")).unwrap();
        assert_eq!(fs::metadata(&mine).unwrap().mode() & 0o777, 0o700);
        check_dir(&mine).unwrap();

        fs::set_permissions(&mine, fs::Permissions::from_mode(0o777)).unwrap();
        let error = check_dir(&mine).unwrap_err().to_string();
        assert!(
            error.contains("mode 777") && error.contains("chmod go-w"),
            "{error}"
        );
        fs::set_permissions(&mine, fs::Permissions::from_mode(0o750)).unwrap();
        check_dir(&mine).unwrap();

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&mine, &link).unwrap();
        assert!(matches!(check_dir(&link), Err(NotPrivate::Link { .. })));
    }

    #[test]
    fn files_others_can_write_or_in_such_a_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("peers.toml");
        crate::fsutil::write_atomic(&file, b"").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        check_file(&file).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(
            check_file(&file),
            Err(NotPrivate::Writable { mode: 0o666, .. })
        ));
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let error = check_file(&file).unwrap_err();
        assert!(
            matches!(&error, NotPrivate::Writable { path, .. } if path == &dir.path().canonicalize().unwrap()),
            "{error}"
        );
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        // A link to a private file is fine: the file is what is checked.
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        check_file(&link).unwrap();
    }

    /// Whoever can write a directory above the store can rename the store
    /// away and put their own in its place.
    #[test]
    #[expect(clippy::print_stderr, reason = "a skipped part says why")]
    fn directories_above_must_be_ours_or_roots_and_not_writable_unless_sticky() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().canonicalize().unwrap().join("parent");
        let store = parent.join("store");
        create_dir_all(&store).unwrap();
        check_above(&store).unwrap();
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o777)).unwrap();
        let error = check_above(&store).unwrap_err();
        assert!(
            matches!(&error, NotPrivate::AboveWritable { path, mode: 0o777 } if *path == parent),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains(&format!("`chmod go-w {}`", parent.display())),
            "{error}"
        );
        // Sticky, as /tmp is: others cannot rename what is ours in it.
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o1777)).unwrap();
        check_above(&store).unwrap();
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o755)).unwrap();
        if my_uid() == 0 {
            std::os::unix::fs::chown(&parent, Some(65534), None).unwrap();
            let error = check_above(&store).unwrap_err();
            assert!(
                matches!(error, NotPrivate::AboveOwner { owner: 65534, .. }),
                "{error}"
            );
        } else {
            eprintln!("skipped the other owner's directory: only root can make one");
        }
    }

    #[test]
    #[expect(clippy::print_stderr, reason = "a skipped test says why")]
    fn a_directory_of_another_user_is_refused() {
        if my_uid() != 0 {
            eprintln!("skipped: only root can give a directory to another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let error = check_dir(&theirs).unwrap_err();
        assert!(
            matches!(
                error,
                NotPrivate::Owner {
                    owner: 65534,
                    me: 0,
                    ..
                }
            ),
            "{error}"
        );
    }
}
