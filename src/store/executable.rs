//! Linked executables, told by a body's first bytes.
//!
//! Go caches a linked binary when it runs one (`go run`, `go tool`) or,
//! with `-cachelink`, every test binary it links: tens of megabytes each,
//! rarely used again, and nothing a coworker's build needs ahead of time.
//! The store marks such bodies when they land ([`is_executable`] on the
//! first [`HEAD_LEN`] bytes of the body, which the writer sees anyway), so
//! that `warren stats` can count them and peers' read-ahead and
//! replication can leave big ones alone (`[share]
//! read-ahead-executables-max`). A lookup still fetches one on demand.
//!
//! What counts as a linked executable, by format:
//!
//! - ELF (`\x7fELF`): type `ET_EXEC` or `ET_DYN` (position-independent
//!   executables and shared objects, what `-buildmode=pie`, `c-shared` and
//!   `plugin` link), in either byte order; relocatable objects (`ET_REL`,
//!   a `.o`) and core dumps are not linked executables.
//! - Mach-O (`0xfeedface`/`0xfeedfacf` and their byte-swapped forms): file
//!   type `MH_EXECUTE`, `MH_DYLIB` or `MH_BUNDLE`; `MH_OBJECT` is not.
//! - Universal ("fat") Mach-O (`0xcafebabe`, `0xcafebabf` for 64-bit
//!   offsets), big-endian: a count of architectures follows. Java class
//!   files start with `0xcafebabe` too, followed by their minor and major
//!   version, which read as one big-endian number is at least 45 (major
//!   version 45, Java 1.0.2); a fat binary has a handful of architectures.
//!   As `file(1)` and LLVM do, a count below [`MAX_FAT_ARCHES`] is a fat
//!   binary and anything else is not. (Go never caches class files, but
//!   the test says how the two are told apart.)
//! - PE (`MZ`): the DOS header's `e_lfanew` (a little-endian u32 at
//!   `0x3c`) points at `PE\0\0`. Go's linker puts it at `0x80`; a header
//!   beyond [`HEAD_LEN`] is not seen, and the body is not counted.
//!
//! The mark is the owner's execute bit on the object file (`0o700` rather
//! than the temp file's `0o600`), as Go's own cache marks the executables
//! it stores: it costs no extra write for other bodies, survives restarts,
//! and an older warren, which ignores the mode, reads the store as before.
//! Objects stored by an older warren carry no mark: they count as other
//! bodies until stored again.

use std::fs::Metadata;
use std::os::unix::fs::PermissionsExt as _;

/// How many of a body's first bytes [`is_executable`] needs at most: the
/// PE header of any Go binary, and of most others, lies within it.
pub(crate) const HEAD_LEN: usize = 1024;

/// The mode of a stored executable's object file (the owner's execute bit
/// marks it; other objects are `0o600`).
pub(crate) const EXECUTABLE_MODE: u32 = 0o700;

/// A universal Mach-O binary lists fewer architectures than this; a Java
/// class file's version reads as 45 or more.
const MAX_FAT_ARCHES: u32 = 30;

/// Whether `head`, the first bytes of a body (at least [`HEAD_LEN`] of
/// them if the body is that long), is a linked executable: ELF, Mach-O
/// (thin or universal) or PE, as the module docs say. Truncated or
/// unknown input is not.
pub(crate) fn is_executable(head: &[u8]) -> bool {
    elf(head) || mach_o(head) || fat_mach_o(head) || pe(head)
}

/// Whether the object file `meta` describes was marked an executable
/// when it was stored.
pub(crate) fn is_marked(meta: &Metadata) -> bool {
    meta.permissions().mode() & 0o100 != 0
}

fn elf(head: &[u8]) -> bool {
    const ET_EXEC: u16 = 2;
    const ET_DYN: u16 = 3;
    let (Some(b"\x7fELF"), Some(&data), Some(kind)) =
        (head.get(..4), head.get(5), head.get(16..18))
    else {
        return false;
    };
    let kind = [kind[0], kind[1]];
    let kind = match data {
        1 => u16::from_le_bytes(kind),
        2 => u16::from_be_bytes(kind),
        _ => return false,
    };
    matches!(kind, ET_EXEC | ET_DYN)
}

fn mach_o(head: &[u8]) -> bool {
    const MH_EXECUTE: u32 = 2;
    const MH_DYLIB: u32 = 6;
    const MH_BUNDLE: u32 = 8;
    let (Some(magic), Some(file_type)) = (u32_at(head, 0), head.get(12..16)) else {
        return false;
    };
    let file_type: [u8; 4] = file_type.try_into().expect("4 bytes");
    // The magic as read big-endian tells the byte order of what follows.
    let file_type = match magic {
        0xfeed_face | 0xfeed_facf => u32::from_be_bytes(file_type),
        0xcefa_edfe | 0xcffa_edfe => u32::from_le_bytes(file_type),
        _ => return false,
    };
    matches!(file_type, MH_EXECUTE | MH_DYLIB | MH_BUNDLE)
}

fn fat_mach_o(head: &[u8]) -> bool {
    matches!(u32_at(head, 0), Some(0xcafe_babe | 0xcafe_babf))
        && u32_at(head, 4).is_some_and(|arches| (1..MAX_FAT_ARCHES).contains(&arches))
}

fn pe(head: &[u8]) -> bool {
    if !head.starts_with(b"MZ") {
        return false;
    }
    let Some(offset) = head.get(0x3c..0x40) else {
        return false;
    };
    let offset = u32::from_le_bytes(offset.try_into().expect("4 bytes")) as usize;
    offset
        .checked_add(4)
        .and_then(|end| head.get(offset..end))
        .is_some_and(|signature| signature == b"PE\0\0")
}

/// The big-endian u32 at `at`, if `head` holds it.
fn u32_at(head: &[u8], at: usize) -> Option<u32> {
    let bytes = head.get(at..at + 4)?;
    Some(u32::from_be_bytes(bytes.try_into().expect("4 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF header of `class` (1: 32-bit, 2: 64-bit), byte order `data`
    /// (1: little, 2: big) and type `kind`, padded as a body would go on.
    fn elf_head(class: u8, data: u8, kind: u16) -> Vec<u8> {
        let mut head = vec![0x7f, b'E', b'L', b'F', class, data, 1];
        head.resize(16, 0);
        let kind = if data == 1 {
            kind.to_le_bytes()
        } else {
            kind.to_be_bytes()
        };
        head.extend_from_slice(&kind);
        head.resize(64, 0);
        head
    }

    #[test]
    fn elf_executables_and_shared_objects_are_linked() {
        for (class, data) in [(1, 1), (2, 1), (1, 2), (2, 2)] {
            assert!(is_executable(&elf_head(class, data, 2)), "ET_EXEC");
            assert!(is_executable(&elf_head(class, data, 3)), "ET_DYN");
            assert!(!is_executable(&elf_head(class, data, 1)), "ET_REL");
            assert!(!is_executable(&elf_head(class, data, 4)), "ET_CORE");
        }
        // A byte order that is neither.
        assert!(!is_executable(&elf_head(2, 3, 2)));
    }

    /// A thin Mach-O header with `magic` as its first four bytes and
    /// `file_type` in the byte order that magic says.
    fn mach_o_head(magic: [u8; 4], file_type: u32) -> Vec<u8> {
        let mut head = magic.to_vec();
        head.extend_from_slice(&[0; 8]); // cputype, cpusubtype
        if magic[0] == 0xfe {
            head.extend_from_slice(&file_type.to_be_bytes());
        } else {
            head.extend_from_slice(&file_type.to_le_bytes());
        }
        head.resize(32, 0);
        head
    }

    #[test]
    fn mach_o_in_all_four_magics() {
        for magic in [
            [0xfe, 0xed, 0xfa, 0xce],
            [0xfe, 0xed, 0xfa, 0xcf],
            [0xce, 0xfa, 0xed, 0xfe],
            [0xcf, 0xfa, 0xed, 0xfe],
        ] {
            assert!(
                is_executable(&mach_o_head(magic, 2)),
                "MH_EXECUTE {magic:x?}"
            );
            assert!(is_executable(&mach_o_head(magic, 6)), "MH_DYLIB {magic:x?}");
            assert!(
                is_executable(&mach_o_head(magic, 8)),
                "MH_BUNDLE {magic:x?}"
            );
            assert!(
                !is_executable(&mach_o_head(magic, 1)),
                "MH_OBJECT {magic:x?}"
            );
        }
    }

    /// A universal binary names a few architectures after `cafebabe`; a
    /// Java class file has its version there, 45 or more as one number.
    #[test]
    fn fat_mach_o_is_told_from_a_java_class_file() {
        let fat = |magic: u32, arches: u32| {
            let mut head = magic.to_be_bytes().to_vec();
            head.extend_from_slice(&arches.to_be_bytes());
            head.resize(64, 0);
            head
        };
        assert!(is_executable(&fat(0xcafe_babe, 2)));
        assert!(is_executable(&fat(0xcafe_babf, 2)), "64-bit offsets");
        assert!(!is_executable(&fat(0xcafe_babe, 0)));
        // Java 8 (major 52, minor 0), and Java 1.0.2 (45.3).
        assert!(!is_executable(&fat(0xcafe_babe, 52)));
        assert!(!is_executable(&fat(0xcafe_babe, (3 << 16) | 45)));
    }

    /// A PE image: `MZ`, and `PE\0\0` where `e_lfanew` points (`0x80`, as
    /// Go's linker writes).
    fn pe_head(lfanew: u32, len: usize) -> Vec<u8> {
        let mut head = b"MZ".to_vec();
        head.resize(0x3c, 0);
        head.extend_from_slice(&lfanew.to_le_bytes());
        head.resize(len.max(0x40), 0);
        if let Some(signature) = head.get_mut(lfanew as usize..lfanew as usize + 4) {
            signature.copy_from_slice(b"PE\0\0");
        }
        head
    }

    #[test]
    fn pe_needs_its_header_where_the_dos_header_points() {
        assert!(is_executable(&pe_head(0x80, 0x200)));
        assert!(is_executable(&pe_head(0xe8, HEAD_LEN)));
        // No signature there: a DOS program, or a text starting "MZ".
        let mut dos = pe_head(0x80, 0x200);
        dos[0x80] = b'N';
        assert!(!is_executable(&dos));
        // Pointing past the bytes read, or past any address.
        assert!(!is_executable(&pe_head(0x80, 0x82)));
        assert!(!is_executable(&pe_head(u32::MAX, 0x100)));
    }

    /// Every format cut short is not an executable, and never a panic.
    #[test]
    fn truncated_heads_are_not_executables() {
        for head in [
            elf_head(2, 1, 2),
            mach_o_head([0xcf, 0xfa, 0xed, 0xfe], 2),
            pe_head(0x80, 0x100),
        ] {
            for len in 0..16 {
                assert!(!is_executable(&head[..len]), "{:x?}", &head[..len]);
            }
        }
        assert!(!is_executable(&[0xca, 0xfe, 0xba, 0xbe, 0, 0, 0]));
    }

    /// What Go caches most: package archives, test output, module
    /// indexes, and bytes of every value.
    #[test]
    fn other_bodies_are_not() {
        assert!(!is_executable(
            b"!<arch>\n__.PKGDEF 0 0 0 644 1 `\ngo object linux amd64\n"
        ));
        assert!(!is_executable(b"go index v2\n"));
        assert!(!is_executable(b"PASS\nok  \tencoding/json\t0.1s\n"));
        assert!(!is_executable(b""));
        for byte in 0..=u8::MAX {
            assert!(!is_executable(&[byte; HEAD_LEN]), "{byte:#x}");
        }
    }
}
