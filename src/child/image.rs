//! Whether this process can start corepool's children at all: they are
//! this program's executable run again (`/proc/self/exe`), so corepool's
//! code must be *in* that executable.
//!
//! It is not when corepool is in a shared library loaded into another
//! program (a Python extension, a plugin: the executable is `python3`), or
//! when the program was started through the dynamic loader
//! (`/lib64/ld-linux-x86-64.so.2 ./prog`: the executable is the loader).
//! A child started then runs something else entirely and never serves, and
//! the failure would only say that the child ended before it was ready.
//! So pools and processes refuse at once, naming both files.

use crate::error::{Error, Result};
use crate::sys;
use std::sync::OnceLock;

/// `Ok` if children can be started; the reason they cannot, otherwise.
/// Asked once per process (the answer cannot change while it runs).
pub(crate) fn check_reexecutable() -> Result<()> {
    static VERDICT: OnceLock<Option<String>> = OnceLock::new();
    match VERDICT.get_or_init(why_not_reexecutable) {
        None => Ok(()),
        Some(reason) => Err(Error::Spawn {
            reason: reason.clone(),
            source: None,
        }),
    }
}

/// Why children cannot be started (`None`: they can, or we cannot tell).
/// Unknown counts as yes: only a definite answer from `/proc` refuses.
fn why_not_reexecutable() -> Option<String> {
    let ours = check_reexecutable as fn() -> Result<()> as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let (inode, ours_path) = maps.lines().find_map(|line| mapping_at(line, ours))?;
    let exe_inode = sys::path_identity("/proc/self/exe").ok()?.1;
    let exe_path = std::fs::read_link("/proc/self/exe").ok()?;
    let exe_path = exe_path.to_string_lossy();
    if !is_other_file(inode, &ours_path, exe_inode, &exe_path) {
        return None;
    }
    Some(format!(
        "corepool starts its children by running this program's executable again, \
         but the executable is {exe_path} and corepool's code is in {ours_path}: a \
         library loaded into another program (a Python extension, a plugin) cannot \
         start pools or processes. Link corepool into the program's own executable \
         (a Rust binary); a program started through the dynamic loader \
         (`ld.so ./program`) must be run directly instead"
    ))
}

/// Whether the file mapped at our code (`inode`, `path` as
/// `/proc/self/maps` gives them) is definitely not the executable
/// (`exe_inode` from `stat`, `exe_path` from `readlink`).
///
/// Device numbers are not compared: `maps` and `stat` disagree on them for
/// btrfs subvolumes and for overlayfs (a container's root) while naming the
/// same file. The inode alone, or the path alone, matching is enough; code
/// in an anonymous mapping (inode 0: a packed or relinked executable, or
/// a path that is not a file) cannot be placed, and counts as ours.
fn is_other_file(inode: u64, path: &str, exe_inode: u64, exe_path: &str) -> bool {
    inode != 0 && path.starts_with('/') && inode != exe_inode && path != exe_path
}

/// The inode and path of the mapping on one line of `/proc/self/maps`, if
/// it holds `addr`: `start-end perms offset major:minor inode path` (the
/// path is the rest of the line, spaces included).
fn mapping_at(line: &str, addr: usize) -> Option<(u64, String)> {
    let (range, rest) = line.split_once(' ')?;
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    if !(start..end).contains(&addr) {
        return None;
    }
    // perms, offset, device, inode: single words, then spaces, then the path.
    let mut rest = rest;
    let mut words = [""; 4];
    for word in &mut words {
        rest = rest.trim_start_matches(' ');
        let (w, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        *word = w;
        rest = tail;
    }
    let inode = words[3].parse().ok()?;
    Some((inode, rest.trim_start_matches(' ').to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "reads /proc")]
    fn a_test_binary_can_start_children() {
        assert!(check_reexecutable().is_ok());
    }

    #[test]
    fn a_maps_line_is_read_whole() {
        let line = "55d0c0a00000-55d0c0b00000 r-xp 00001000 fd:01 1234567    /usr/bin/my  program";
        let got = mapping_at(line, 0x55d0c0a00010);
        assert_eq!(got, Some((1234567, "/usr/bin/my  program".into())));
        assert_eq!(mapping_at(line, 0x55d0c0b00000), None);
        assert_eq!(mapping_at("garbage", 0), None);
        let anonymous = "7f0000000000-7f0000001000 r-xp 00000000 00:00 0 ";
        assert_eq!(
            mapping_at(anonymous, 0x7f0000000000),
            Some((0, String::new()))
        );
    }

    #[test]
    fn only_a_definitely_other_file_refuses() {
        // The same file: by inode (btrfs and overlayfs give other device
        // numbers in maps than in stat), or by path.
        assert!(!is_other_file(257, "/usr/bin/app", 257, "/usr/bin/app"));
        assert!(!is_other_file(257, "/usr/bin/app", 257, "/elsewhere"));
        assert!(!is_other_file(257, "/usr/bin/app", 999, "/usr/bin/app"));
        // Code in an anonymous mapping, or a pseudo-path: cannot tell.
        assert!(!is_other_file(0, "", 999, "/usr/bin/python3"));
        assert!(!is_other_file(12, "[anon:packed]", 999, "/usr/bin/python3"));
        // A library in another program.
        assert!(is_other_file(
            12,
            "/x/libstats.so",
            999,
            "/usr/bin/python3.11"
        ));
    }
}
