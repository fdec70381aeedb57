//! The fsync floor: how long one small durable write takes on this filesystem. Every durable
//! append pays at least this (shared among the appends of a group commit).

use std::fmt;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

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
