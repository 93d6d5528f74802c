//! What a rank learns about itself before it serves: a content hash of its
//! executable (the same-binary check) and its share of the node's CPUs.

use std::io::Read;

/// A 64-bit FNV-1a hash of the running executable's bytes. Content, not
/// inode or mtime: those differ between nodes holding copies of one build.
pub(crate) fn executable_hash() -> std::io::Result<u64> {
    let mut file = std::fs::File::open("/proc/self/exe")?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hash);
        }
        for &byte in &buf[..n] {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Words of the CPU bitmask the ranks of a node compare.
pub(crate) const MASK_WORDS: usize = 16;

/// `cpus` as a bitmask of [`MASK_WORDS`] words (CPUs past 1023 are folded
/// in, which only makes two sets look equal that are not: then the ranks
/// split a set instead of keeping their own, still without overlap).
pub(crate) fn mask_of(cpus: &[usize]) -> [u64; MASK_WORDS] {
    let mut mask = [0u64; MASK_WORDS];
    for &cpu in cpus {
        let bit = cpu % (64 * MASK_WORDS);
        mask[bit / 64] |= 1 << (bit % 64);
    }
    mask
}

/// The CPUs this rank's pool gets: when every rank of the node may run on
/// the same set (the launcher did not bind them), its `local_rank`-th slice
/// of it, so that ranks sharing a node never pin two workers to one core;
/// when the launcher bound each rank to its own CPUs, those.
pub(crate) fn cpu_share(
    allowed: &[usize],
    same_set_on_node: bool,
    local_rank: usize,
    local_size: usize,
) -> Vec<usize> {
    if !same_set_on_node || local_size <= 1 || allowed.is_empty() {
        return allowed.to_vec();
    }
    let n = allowed.len();
    let start = local_rank * n / local_size;
    let end = (local_rank + 1) * n / local_size;
    if start < end {
        allowed[start..end].to_vec()
    } else {
        // More ranks than CPUs on this node: they must share cores.
        vec![allowed[local_rank % n]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_without_overlap() {
        let all: Vec<usize> = (0..8).collect();
        assert_eq!(cpu_share(&all, true, 0, 2), vec![0, 1, 2, 3]);
        assert_eq!(cpu_share(&all, true, 1, 2), vec![4, 5, 6, 7]);
        assert_eq!(cpu_share(&all, false, 1, 2), all);
        assert_eq!(cpu_share(&[0, 1], true, 2, 3), vec![1]);
        assert_eq!(cpu_share(&[0, 1], true, 0, 3), vec![0]);
        assert_eq!(mask_of(&[0, 65])[1], 2);
    }
}
