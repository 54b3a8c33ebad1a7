//! ratel's engine: the catalog built from config, pure rating, the ledger, CDR ingest, RADIUS
//! accounting, the `serve` core loop and the xDR Parquet writer. See ARCHITECTURE.md for the
//! map and the invariants.

pub(crate) mod account_index;
pub mod acks;
pub mod backup;
pub mod batch;
pub mod call_keys;
pub mod catalog;
pub mod cdr;
pub mod commands;
pub mod compact;
pub mod config;
pub mod csv;
pub mod domain;
pub mod events;
pub mod ledger;
pub mod metrics;
pub mod outbox;
pub mod packages;
pub mod radius;
pub mod rating;
pub mod reload;
pub mod schedule;
pub mod serve;
pub mod template;
pub mod users;
pub mod xdr;

/// Turns transparent huge pages off for this process (Linux `PR_SET_THP_DISABLE`; inherited
/// by children), unless `RATEL_THP=on`. With THP `always`, every first touch of a 2 MiB
/// aligned range of the allocator's arenas faulted in and zeroed a whole huge page: `ratel
/// rate` on a month-long 2M-row file spent 28% of its CPU in the kernel's `clear_page`
/// (measured with `perf`). Off: +30% rows/s and 1/4 of the kernel time there; RADIUS
/// throughput unchanged, RSS lower. Returns whether it was turned off.
pub fn disable_transparent_huge_pages() -> bool {
    if std::env::var("RATEL_THP").is_ok_and(|v| v == "on") {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with PR_SET_THP_DISABLE takes integer arguments only and changes a
        // flag of this process; no memory is passed.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Asks the CPU to load the cache lines of `len` bytes at `p` (a hint: no effect on
/// what the program computes). The xDR order visits a block's records at random; without
/// it the gather waited on a cache miss for nearly every record and subscriber.
#[inline(always)]
pub(crate) fn prefetch(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut off = 0;
        while off < len {
            // SAFETY: a prefetch never faults and never changes memory, whatever the
            // address; `wrapping_add` computes it without dereferencing.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    p.wrapping_add(off) as *const i8,
                )
            };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// [`prefetch`] of the bytes of one value (a struct in a slice, say).
#[inline(always)]
pub(crate) fn prefetch_value<T>(v: &T) {
    prefetch((v as *const T).cast(), std::mem::size_of::<T>());
}

/// A xorshift64 generator from `seed` (not 0), for tests that draw random cases
/// reproducibly.
#[cfg(test)]
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
