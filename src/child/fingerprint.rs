//! Which build this process runs: parent and child compare fingerprints
//! before a child trusts anything the parent wrote about functions.
//!
//! The fingerprint identifies the *loaded image*, not the file: the GNU
//! build-id note the linker wrote into it (a hash of the linked output), or,
//! for an executable linked without one, a hash of its loaded code. A child
//! re-executes `/proc/self/exe`, which is the parent's own image even after
//! the file was replaced on disk, so a `touch` or a rebuild that swaps the
//! file never makes parent and child disagree; only a different build does.

use crate::sys;
use crate::wire::task;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

/// `NT_GNU_BUILD_ID`: the type of the build-id note, owned by "GNU".
const NT_GNU_BUILD_ID: u32 = 3;

/// What identifies the loaded image.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Image {
    /// The linker's build-id.
    BuildId(Vec<u8>),
    /// No build-id: a hash of the executable segments as loaded.
    Code(u64),
    /// The loader reported nothing (not expected on Linux).
    Unknown,
}

/// Identifies this build: the loaded image ([`Image`]), corepool's version,
/// and where functions sit relative to each other. Parent and child must
/// agree. Computed once per process: every later call, in the parent or the
/// child, returns the same value whatever happens to the file on disk.
pub(crate) fn fingerprint() -> u64 {
    static FINGERPRINT: OnceLock<u64> = OnceLock::new();
    *FINGERPRINT.get_or_init(|| {
        // DefaultHasher::new() uses fixed keys: the same value in every process.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        loaded_image().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        // Two builds of one image differ in where their functions sit; this
        // also covers an `Image::Unknown`.
        let this: fn() -> u64 = fingerprint;
        ((this as usize).wrapping_sub(task::anchor as task::Trampoline as usize)).hash(&mut h);
        // Zero is never a fingerprint: it reads as "not written".
        h.finish().max(1)
    })
}

/// The main program's build-id, or else a hash of its loaded code.
fn loaded_image() -> Image {
    let segments = sys::main_program_segments();
    let build_id = segments
        .iter()
        .filter(|s| s.kind == sys::PT_NOTE)
        .find_map(|s| gnu_build_id(s.bytes));
    if let Some(id) = build_id {
        return Image::BuildId(id.to_vec());
    }
    let mut code = segments
        .iter()
        .filter(|s| s.kind == sys::PT_LOAD && s.flags & sys::PF_X != 0)
        .peekable();
    if code.peek().is_none() {
        return Image::Unknown;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for segment in code {
        segment.bytes.hash(&mut h);
    }
    Image::Code(h.finish())
}

/// The descriptor of the `NT_GNU_BUILD_ID` note owned by "GNU" among the
/// ELF notes in `notes`, if there is one. Each note is a 12-byte header
/// (name size, descriptor size, type, in native byte order), then the name
/// and the descriptor, each padded to 4 bytes.
fn gnu_build_id(notes: &[u8]) -> Option<&[u8]> {
    let word = |at: usize| -> Option<u32> {
        let bytes = notes.get(at..at.checked_add(4)?)?;
        Some(u32::from_ne_bytes(bytes.try_into().ok()?))
    };
    let padded = |n: u32| (n as usize).checked_add(3).map(|n| n & !3);
    let mut at = 0;
    while at + 12 <= notes.len() {
        let (name_len, desc_len, kind) = (word(at)?, word(at + 4)?, word(at + 8)?);
        let name_at = at + 12;
        let desc_at = name_at.checked_add(padded(name_len)?)?;
        let end = desc_at.checked_add(padded(desc_len)?)?;
        let name = notes.get(name_at..name_at.checked_add(name_len as usize)?)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return notes
                .get(desc_at..desc_at.checked_add(desc_len as usize)?)
                .filter(|id| !id.is_empty());
        }
        at = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "Miri has no dynamic loader")]
    fn fingerprint_is_stable_and_not_zero() {
        let first = fingerprint();
        assert_ne!(first, 0);
        assert_eq!(first, fingerprint());
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri has no dynamic loader")]
    fn the_loaded_image_is_identified_by_content() {
        // Debian's and most distributions' linkers write a build-id; either
        // way the identity is found, and found the same twice.
        let image = loaded_image();
        assert_ne!(image, Image::Unknown);
        assert_eq!(image, loaded_image());
    }

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend((name.len() as u32).to_ne_bytes());
        out.extend((desc.len() as u32).to_ne_bytes());
        out.extend(kind.to_ne_bytes());
        out.extend(name);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend(desc);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    #[test]
    fn the_build_id_note_is_found_among_others() {
        let mut notes = note(b"GNU\0", 1, &[0; 16]); // an ABI tag
        notes.extend(note(b"Go\0", NT_GNU_BUILD_ID, b"not ours"));
        notes.extend(note(b"GNU\0", NT_GNU_BUILD_ID, &[0xab; 20]));
        assert_eq!(gnu_build_id(&notes), Some(&[0xab; 20][..]));
        assert_eq!(gnu_build_id(&note(b"GNU\0", 1, &[1, 2, 3])), None);
    }

    #[test]
    fn truncated_notes_are_no_build_id() {
        let notes = note(b"GNU\0", NT_GNU_BUILD_ID, &[0xcd; 20]);
        for cut in 0..notes.len() {
            // Never a panic, never bytes past the end.
            assert_eq!(gnu_build_id(&notes[..cut]), None, "cut at {cut}");
        }
        assert_eq!(gnu_build_id(&notes), Some(&[0xcd; 20][..]));
        assert_eq!(gnu_build_id(&[]), None);
        assert_eq!(gnu_build_id(&[0xff; 12]), None);
    }
}
