//! The fsync floor: how long one small durable write takes on this filesystem. Every durable
//! append pays at least this (shared among the appends of a group commit).

use std::fmt;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

pub struct FsyncFloor {
    pub iterations: u32,
    pub per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl fmt::Display for FsyncFloor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fsync floor: {} x (64-byte write + fdatasync): {:.0}/s, p50 {} us, p99 {} us",
            self.iterations, self.per_sec, self.p50_us, self.p99_us
        )
    }
}

pub fn measure(dir: &Path, iterations: u32) -> anyhow::Result<FsyncFloor> {
    let path = dir.join(".chat-bench-fsync");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let mut hist = Histogram::<u64>::new(3)?;
    let block = [0xabu8; 64];
    let start = Instant::now();
    for i in 0..iterations {
        let t = Instant::now();
        // Append like a WAL does, so the file size (metadata) changes too.
        file.write_all_at(&block, u64::from(i) * block.len() as u64)?;
        file.sync_data()?;
        hist.record(t.elapsed().as_micros() as u64)?;
    }
    let elapsed = start.elapsed();
    file.flush()?;
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(FsyncFloor {
        iterations,
        per_sec: f64::from(iterations) / elapsed.as_secs_f64(),
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
    })
}

/// The fsync floor sampled all along a long run: one small append + `fdatasync` every
/// `every`, on a background thread, into a histogram a reporter takes per window. This disk's
/// fsync is bimodal from one period to the next, so a latency that moves over a long run is
/// read against the floor *of the same minutes*.
pub struct Probe {
    hist: Arc<Mutex<Histogram<u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    pub fn start(dir: &Path, every: Duration) -> anyhow::Result<Probe> {
        let path = dir.join(".chat-bench-fsync-probe");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        // Bounded (1 µs to a minute): `saturating_record` clamps to the current range instead
        // of growing an auto-resizing histogram.
        let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
            1, 60_000_000, 3,
        )?));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (hist.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("fsync-probe".into())
            .spawn(move || {
                let block = [0xabu8; 64];
                // Wrap around every 64 MiB so a day-long run does not grow the file unboundedly.
                let wrap = 1u64 << 20;
                let mut i = 0u64;
                while !s.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let ok = file
                        .write_all_at(&block, (i % wrap) * block.len() as u64)
                        .and_then(|()| file.sync_data());
                    if ok.is_ok() {
                        h.lock()
                            .unwrap()
                            .saturating_record(t.elapsed().as_micros() as u64);
                    }
                    i += 1;
                    std::thread::sleep(every);
                }
                drop(file);
                let _ = std::fs::remove_file(&path);
            })?;
        Ok(Probe {
            hist,
            stop,
            thread: Some(thread),
        })
    }

    /// The fsyncs timed since the last call (µs).
    pub fn take(&self) -> Histogram<u64> {
        let mut hist = self.hist.lock().unwrap();
        let fresh = Histogram::new_from(&hist);
        std::mem::replace(&mut *hist, fresh)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
