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
//! #130). So glibc is tuned instead ([`tune_c_malloc`]), against the ways it lets a
//! long-running RocksDB process grow: many arenas each keeping its own free pages; the *dynamic*
//! mmap threshold, which after the first large block is freed moves every later large block
//! (memtable arenas, compaction buffers) from `mmap` (returned on free) into the arenas (kept,
//! and fragmented by the small blocks between them); and free pages inside an arena, which
//! glibc returns only from the arena's top. The last is what the block cache's churn leaves
//! (measured: 2 arenas and the fixed threshold still let "free" climb 11 → 45 MiB in 20 minutes
//! on one node of a 3-node soak), so [`start`] also gives those pages back every 10 s
//! (`malloc_trim`, which hands whole free pages to the kernel wherever they lie).
//!
//! Declared by the binary (`main.rs`) only, so processes that link chatd as a library keep their
//! own allocator.

use std::time::Duration;

use tikv_jemalloc_ctl::{epoch, stats};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Arenas glibc may create for the C++ side (its default is 8 per core). RocksDB's allocations
/// are few per operation next to Rust's: with two, the 3-node soak hour's latency matched the
/// build that had RocksDB on jemalloc (benchmarks.md, "60 minutes on 3 nodes, what ships").
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

/// Start the allocator thread: every [`TRIM_EVERY`] it gives glibc's free pages back to the
/// kernel. With `metrics`, it also publishes both allocators' figures:
/// - jemalloc (Rust), every second: what the heap holds live (`chatd_heap_allocated_bytes`) and
///   what it keeps resident (`chatd_heap_resident_bytes`); resident well above allocated is
///   fragmentation, allocated rising is something that keeps growing.
/// - glibc (RocksDB's C++), after each trim: bytes in use (`chatd_malloc_in_use_bytes`, mapped
///   blocks included) and bytes free in its arenas (`chatd_malloc_free_bytes`; the trim gives
///   their whole pages back, so not all of it is resident), and the time spent trimming
///   (`chatd_malloc_trim_micros_total`).
pub fn start(metrics: bool) {
    std::thread::Builder::new()
        .name("heap".into())
        .spawn(move || {
            let rounds_per_trim = (TRIM_EVERY.as_secs() / PUBLISH_EVERY.as_secs()).max(1);
            for round in 0u64.. {
                if round % rounds_per_trim == 0 {
                    trim_c_malloc();
                    if metrics {
                        publish_c_malloc();
                    }
                }
                if metrics {
                    publish_jemalloc();
                }
                std::thread::sleep(PUBLISH_EVERY);
            }
        })
        .expect("spawn the heap thread");
}

/// How often jemalloc's figures are published.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// How often glibc's free pages are given back (and its figures read: both walk its arenas
/// under their locks, which is why not every second).
const TRIM_EVERY: Duration = Duration::from_secs(10);

fn trim_c_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = std::time::Instant::now();
        // SAFETY: malloc_trim only releases free memory of glibc's arenas; no pointers.
        unsafe {
            libc::malloc_trim(0);
        }
        metrics::counter!("chatd_malloc_trim_micros_total")
            .increment(started.elapsed().as_micros() as u64);
    }
}

fn publish_jemalloc() {
    // jemalloc's statistics are a snapshot refreshed when the epoch advances.
    if epoch::advance().is_ok() {
        if let (Ok(allocated), Ok(resident)) = (stats::allocated::read(), stats::resident::read()) {
            metrics::gauge!("chatd_heap_allocated_bytes").set(allocated as f64);
            metrics::gauge!("chatd_heap_resident_bytes").set(resident as f64);
        }
    }
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
