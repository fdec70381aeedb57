//! The chatd process's allocators: jemalloc for Rust, glibc's malloc tuned for RocksDB's C++, and
//! both allocators' own figures published as metrics.
//!
//! Why not glibc's malloc for Rust: tokio's workers allocate and free buffers, entries and
//! messages on every thread (often freeing on another than allocated), and glibc's per-thread
//! arenas hold on to the freed pages, so a node's RSS crept upward long after its caches had
//! reached their caps. jemalloc returns dirty pages on a decay timer, as TiKV runs it.
//!
//! RocksDB's C++ keeps glibc's malloc: jemalloc can replace `malloc` itself (tikv-jemalloc-sys's
//! unprefixed symbols, which the rocksdb crate's `jemalloc` feature also forces), but then
//! libfaketime — which the fault-injection suite's clock nemesis preloads — cannot start beside
//! it (its first `clock_gettime` recurses through jemalloc's initialisation; libfaketime issue
//! #130). So glibc is tuned instead ([`tune_c_malloc`]), against the two ways it lets a
//! long-running RocksDB process grow: many arenas each keeping its own free pages, and the
//! *dynamic* mmap threshold, which after the first large block is freed moves every later large
//! block (memtable arenas, compaction buffers) from `mmap` (returned on free) into the arenas
//! (kept, and fragmented by the small blocks between them).
//!
//! Declared by the binary (`main.rs`) only, so processes that link chatd as a library keep their
//! own allocator.

use std::time::Duration;

use tikv_jemalloc_ctl::{epoch, stats};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Arenas glibc may create for the C++ side (its default is 8 per core). RocksDB's allocations
/// are few per operation next to Rust's, so two arenas cost no measurable contention.
const C_ARENAS: i32 = 2;
/// Blocks at least this large are `mmap`ed and unmapped on free. Setting it (glibc's default
/// value) turns off glibc's dynamic threshold, which would otherwise climb to 32 MiB.
const C_MMAP_THRESHOLD: i32 = 128 * 1024;

/// Tune glibc's malloc (RocksDB's allocator) before any thread starts. A setting given in the
/// environment (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`, or `GLIBC_TUNABLES`) wins.
pub fn tune_c_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set_by_env = |name: &str| std::env::var_os(name).is_some();
        if set_by_env("GLIBC_TUNABLES") {
            return;
        }
        // SAFETY: mallopt only changes glibc's allocator parameters; called before other
        // threads exist (main has not built the runtime yet).
        unsafe {
            if !set_by_env("MALLOC_ARENA_MAX") {
                libc::mallopt(libc::M_ARENA_MAX, C_ARENAS);
            }
            if !set_by_env("MALLOC_MMAP_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, C_MMAP_THRESHOLD);
            }
        }
    }
}

/// Once every `every`, on a thread of its own, both allocators' figures:
/// - jemalloc (Rust): what the heap holds live (`chatd_heap_allocated_bytes`) and what it keeps
///   resident (`chatd_heap_resident_bytes`); resident well above allocated is fragmentation,
///   allocated rising is something that keeps growing.
/// - glibc (RocksDB's C++), every tenth time (reading them walks the arenas' free lists under
///   their locks): bytes in use (`chatd_malloc_in_use_bytes`, mapped blocks included) and bytes
///   free but kept by its arenas (`chatd_malloc_free_bytes`). Free rising while in use is level
///   is the fragmentation [`tune_c_malloc`] is there to stop.
pub fn publish_every(every: Duration) {
    std::thread::Builder::new()
        .name("heap-metrics".into())
        .spawn(move || {
            for round in 0u64.. {
                // jemalloc's statistics are a snapshot refreshed when the epoch advances.
                if epoch::advance().is_ok() {
                    if let (Ok(allocated), Ok(resident)) =
                        (stats::allocated::read(), stats::resident::read())
                    {
                        metrics::gauge!("chatd_heap_allocated_bytes").set(allocated as f64);
                        metrics::gauge!("chatd_heap_resident_bytes").set(resident as f64);
                    }
                }
                if round % 10 == 0 {
                    publish_c_malloc();
                }
                std::thread::sleep(every);
            }
        })
        .expect("spawn the heap metrics thread");
}

fn publish_c_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 reads glibc's counters (taking each arena's lock); no pointers.
        let info = unsafe { libc::mallinfo2() };
        metrics::gauge!("chatd_malloc_in_use_bytes").set((info.uordblks + info.hblkhd) as f64);
        metrics::gauge!("chatd_malloc_free_bytes").set(info.fordblks as f64);
    }
}
