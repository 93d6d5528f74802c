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
    let (ours_id, ours_path) = maps.lines().find_map(|line| mapping_at(line, ours))?;
    let exe = sys::path_identity("/proc/self/exe").ok()?;
    let exe = (sys::device_numbers(exe.0), exe.1);
    if exe == ours_id {
        return None;
    }
    let exe_path = std::fs::read_link("/proc/self/exe")
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "another file".into());
    Some(format!(
        "corepool starts its children by running this program's executable again, \
         but the executable is {exe_path} and corepool's code is in {ours_path}: a \
         library loaded into another program (a Python extension, a plugin) cannot \
         start pools or processes. Link corepool into the program's own executable \
         (a Rust binary); a program started through the dynamic loader \
         (`ld.so ./program`) must be run directly instead"
    ))
}

/// A mapped file as `/proc/self/maps` names it: (device numbers, inode).
type FileIdentity = ((u32, u32), u64);

/// The file and path of the mapping on one line of `/proc/self/maps`, if it
/// holds `addr`: `start-end perms offset major:minor inode path`.
fn mapping_at(line: &str, addr: usize) -> Option<(FileIdentity, String)> {
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    if !(start..end).contains(&addr) {
        return None;
    }
    let _perms = fields.next()?;
    let _offset = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let device = (
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    );
    let inode = fields.next()?.parse().ok()?;
    let path = fields.collect::<Vec<_>>().join(" ");
    Some(((device, inode), path))
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
        let line = "55d0c0a00000-55d0c0b00000 r-xp 00001000 fd:01 1234567    /usr/bin/my program";
        let got = mapping_at(line, 0x55d0c0a00010);
        assert_eq!(
            got,
            Some((((0xfd, 1), 1234567), "/usr/bin/my program".into()))
        );
        assert_eq!(mapping_at(line, 0x55d0c0b00000), None);
        assert_eq!(mapping_at("garbage", 0), None);
    }
}
