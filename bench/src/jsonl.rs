//! The benchmarks' machine-readable output: one JSON object per line, appended to a file so
//! runs accumulate (`docs/bench/` keeps the ones the docs quote).

use std::io::Write as _;
use std::path::Path;

use anyhow::Context;

/// Append `lines` to `path` (its directory is created if missing), and say so.
pub fn append(
    path: &Path,
    lines: impl IntoIterator<Item = serde_json::Value>,
) -> anyhow::Result<()> {
    append_quietly(path, lines)?;
    println!("JSON lines appended to {}", path.display());
    Ok(())
}

/// [`append`] without saying so, for a run that appends as it goes.
pub fn append_quietly(
    path: &Path,
    lines: impl IntoIterator<Item = serde_json::Value>,
) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    for line in lines {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
