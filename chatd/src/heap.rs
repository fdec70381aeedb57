//! The chatd process's allocator for Rust: jemalloc, with its own figures published as metrics.
//!
//! Why not glibc's malloc: tokio's workers allocate and free buffers, entries and messages on
//! every thread (often freeing on another than allocated), and glibc's per-thread arenas hold on
//! to the freed pages, so a node's RSS crept upward long after its caches had reached their
//! caps. jemalloc returns dirty pages on a decay timer (in background threads), as TiKV runs it.
//!
//! RocksDB's C++ keeps glibc's malloc: jemalloc can replace `malloc` itself (tikv-jemalloc-sys's
//! unprefixed symbols), but then libfaketime — which the fault-injection suite's clock nemesis
//! preloads — cannot start beside it (its first `clock_gettime` recurses through jemalloc's
//! initialisation; libfaketime issue #130). Declared by the binary (`main.rs`) only, so
//! processes that link chatd as a library keep their own allocator.

use std::time::Duration;

use tikv_jemalloc_ctl::{epoch, stats};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Once every `every`, on a thread of its own: what the heap holds live
/// (`chatd_heap_allocated_bytes`) and what it keeps resident (`chatd_heap_resident_bytes`).
/// RSS well above *resident* points outside the heap (stacks, mapped files); resident well above
/// *allocated* is fragmentation; *allocated* rising is something that keeps growing.
pub fn publish_every(every: Duration) {
    std::thread::Builder::new()
        .name("heap-metrics".into())
        .spawn(move || loop {
            // jemalloc's statistics are a snapshot refreshed when the epoch advances.
            if epoch::advance().is_ok() {
                if let (Ok(allocated), Ok(resident)) =
                    (stats::allocated::read(), stats::resident::read())
                {
                    metrics::gauge!("chatd_heap_allocated_bytes").set(allocated as f64);
                    metrics::gauge!("chatd_heap_resident_bytes").set(resident as f64);
                }
            }
            std::thread::sleep(every);
        })
        .expect("spawn the heap metrics thread");
}
