//! Which build this process runs: parent and child compare fingerprints
//! before a child trusts anything the parent wrote about functions.

use crate::sys;
use crate::wire::task;

/// Identifies this binary: the executable file (device, inode, size, mtime),
/// corepool's version, and where functions sit relative to each other.
/// Parent and child must agree.
pub(crate) fn fingerprint() -> u64 {
    use std::hash::{Hash, Hasher};
    // DefaultHasher::new() uses fixed keys: the same value in every process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if let Ok(file) = std::fs::File::open("/proc/self/exe") {
        if let Ok(id) = sys::fstat(std::os::fd::AsFd::as_fd(&file)) {
            (id.dev, id.ino, id.size, id.mtime_ns).hash(&mut h);
        }
    }
    env!("CARGO_PKG_VERSION").hash(&mut h);
    // Two builds of one file name differ in where their functions sit.
    let this: fn() -> u64 = fingerprint;
    ((this as usize).wrapping_sub(task::anchor as task::Trampoline as usize)).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "Miri's /proc/self/exe is not this test's binary")]
    fn fingerprint_is_stable_in_process() {
        assert_eq!(fingerprint(), fingerprint());
    }
}
