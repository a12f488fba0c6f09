//! How the C allocator hands memory back to the kernel, set once at start (glibc only).
//!
//! A long proxied body is read in blocks of up to 256 KiB (`upstream/h1.rs`), and each block
//! is freed once the client has it. With glibc's defaults a free block at the top of the heap
//! is given back to the kernel (`brk`) as soon as 128 KiB-1 MiB is free there, so the next
//! block faults its pages in again, zeroed: on proxied 1 MiB responses over TLS that was 8% of
//! usher's CPU (page faults, page clearing, `brk`), measured with `perf`.
//!
//! Here the heap keeps up to [`TRIM_THRESHOLD`] free before it shrinks, and blocks up to
//! [`MMAP_THRESHOLD`] come from the heap rather than from a mapping of their own. The cost is
//! memory: after a burst, up to 32 MiB freed stays with the process instead of going back to
//! the system (glibc itself raises its threshold as far as 64 MiB once large blocks are freed).
//!
//! `GLIBC_TUNABLES` with a `glibc.malloc.` setting in the environment means the operator chose
//! for themselves: then nothing is set here.

/// Free memory the heap keeps before it gives some back to the kernel.
pub const TRIM_THRESHOLD: usize = 32 << 20;
/// Blocks larger than this get a mapping of their own, returned to the kernel when freed.
pub const MMAP_THRESHOLD: usize = 1 << 20;

/// Applies the thresholds above, unless `tunables` (the value of `GLIBC_TUNABLES`) sets
/// malloc's own. Returns whether they were applied. Meant for the start of `usher run`.
pub fn keep_freed_memory(tunables: Option<&str>) -> bool {
    if tunables.is_some_and(|t| t.contains("glibc.malloc.")) {
        return false;
    }
    set_thresholds()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_thresholds() -> bool {
    use nix::libc;
    let trim = libc::c_int::try_from(TRIM_THRESHOLD).unwrap_or(libc::c_int::MAX);
    let mmap = libc::c_int::try_from(MMAP_THRESHOLD).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt sets allocator parameters from plain integers, under the allocator's
    // own lock; it touches no memory of ours. Each call returns 1 on success, 0 on error.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, trim) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operators_malloc_tunables_are_left_alone() {
        assert!(!keep_freed_memory(Some(
            "glibc.malloc.trim_threshold=1048576"
        )));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_thresholds_are_accepted_by_glibc() {
        assert!(keep_freed_memory(None));
        assert!(keep_freed_memory(Some("glibc.pthread.rseq=0")));
    }
}
