//! The unsynced state of one file: what writes, truncates and size extensions changed since the
//! file was last fsynced, held only in this process's memory — the "page cache" that a simulated
//! power loss throws away.
//!
//! The model: the backing file holds exactly what was fsynced. On top of it a [`Dirty`] keeps
//! - `size`, the length reads see now;
//! - `floor`, the smallest length the file had since the last sync (a truncate below the synced
//!   length hides the backing bytes at and beyond it: they read as zeros unless rewritten);
//! - the written bytes, as disjoint extents (exact bytes, no page rounding, so a power loss can
//!   report exactly how many bytes it dropped).
//!
//! A read of `[off, end)` therefore sees: backing bytes below `floor`, zeros from `floor` to
//! `size`, and the extents over both.

use std::collections::BTreeMap;
use std::io;
use std::time::SystemTime;

/// Pending (unsynced) changes of one regular file. See the module docs for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirty {
    size: u64,
    floor: u64,
    /// Written bytes keyed by offset; never overlapping nor touching, never empty.
    extents: BTreeMap<u64, Vec<u8>>,
    mtime: SystemTime,
}

impl Dirty {
    /// A clean state over a backing file that is `synced_size` bytes long.
    pub fn new(synced_size: u64) -> Self {
        Dirty {
            size: synced_size,
            floor: synced_size,
            extents: BTreeMap::new(),
            mtime: SystemTime::now(),
        }
    }

    /// The length reads see.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Backing bytes at or beyond this offset are hidden by a truncate since the last sync.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// When the content last changed.
    pub fn mtime(&self) -> SystemTime {
        self.mtime
    }

    /// How many written bytes are held (what a power loss would drop).
    pub fn dirty_bytes(&self) -> u64 {
        self.extents.values().map(|v| v.len() as u64).sum()
    }

    /// The written bytes, in offset order.
    pub fn extents(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.extents.iter().map(|(&off, v)| (off, v.as_slice()))
    }

    /// Record a write of `data` at `off`. The caller has checked that `off + data.len()` fits.
    pub fn write(&mut self, off: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = off + data.len() as u64;
        self.size = self.size.max(end);
        self.mtime = SystemTime::now();
        let touching = self.touching(off, end);
        match touching.as_slice() {
            [start] if *start <= off => self.write_into(*start, off, data),
            _ => self.merge(&touching, off, data),
        }
    }

    /// Offsets of the extents that overlap or touch `[off, end]`, in order.
    fn touching(&self, off: u64, end: u64) -> Vec<u64> {
        let mut found = Vec::new();
        if let Some((&start, v)) = self.extents.range(..=off).next_back() {
            if start + v.len() as u64 >= off {
                found.push(start);
            }
        }
        found.extend(self.extents.range(off + 1..=end).map(|(&start, _)| start));
        found
    }

    /// The common case (appends, rewrites): one extent starting at or before `off` absorbs the
    /// write in place.
    fn write_into(&mut self, start: u64, off: u64, data: &[u8]) {
        if let Some(v) = self.extents.get_mut(&start) {
            let at = (off - start) as usize;
            let need = at + data.len();
            if v.len() < need {
                v.resize(need, 0);
            }
            v[at..need].copy_from_slice(data);
        }
    }

    /// Replace the extents in `touching` and the write by one extent covering them all.
    fn merge(&mut self, touching: &[u64], off: u64, data: &[u8]) {
        let start = touching.first().map_or(off, |&s| s.min(off));
        let mut end = off + data.len() as u64;
        for s in touching {
            if let Some(v) = self.extents.get(s) {
                end = end.max(s + v.len() as u64);
            }
        }
        let mut merged = vec![0u8; (end - start) as usize];
        for s in touching {
            if let Some(v) = self.extents.remove(s) {
                let at = (s - start) as usize;
                merged[at..at + v.len()].copy_from_slice(&v);
            }
        }
        let at = (off - start) as usize;
        merged[at..at + data.len()].copy_from_slice(data);
        self.extents.insert(start, merged);
    }

    /// Truncate or extend to `size` (an extension reads as zeros).
    pub fn set_size(&mut self, size: u64) {
        if size < self.size {
            self.cut(size);
            self.floor = self.floor.min(size);
        }
        self.size = size;
        self.mtime = SystemTime::now();
    }

    /// Drop every written byte at or beyond `size`.
    fn cut(&mut self, size: u64) {
        let beyond: Vec<u64> = self.extents.range(size..).map(|(&s, _)| s).collect();
        for s in beyond {
            self.extents.remove(&s);
        }
        if let Some((&s, v)) = self.extents.range_mut(..size).next_back() {
            if s + v.len() as u64 > size {
                v.truncate((size - s) as usize);
            }
        }
    }

    /// Read up to `len` bytes at `off` as the file looks now. `base` fills a buffer with backing
    /// bytes from an offset (zeros where the backing file is shorter).
    pub fn read(
        &self,
        off: u64,
        len: usize,
        base: impl FnOnce(&mut [u8], u64) -> io::Result<()>,
    ) -> io::Result<Vec<u8>> {
        let end = off.saturating_add(len as u64).min(self.size);
        if off >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - off) as usize];
        let base_end = end.min(self.floor);
        if off < base_end {
            base(&mut buf[..(base_end - off) as usize], off)?;
        }
        self.overlay(&mut buf, off);
        Ok(buf)
    }

    /// Copy the written bytes that fall in `[off, off + buf.len())` over `buf`.
    fn overlay(&self, buf: &mut [u8], off: u64) {
        let end = off + buf.len() as u64;
        for (&s, v) in self.extents.range(..end).rev() {
            let e = s + v.len() as u64;
            if e <= off {
                break;
            }
            let (from, to) = (s.max(off), e.min(end));
            buf[(from - off) as usize..(to - off) as usize]
                .copy_from_slice(&v[(from - s) as usize..(to - s) as usize]);
        }
    }

    /// Flip one bit of a written byte at `off`, if a written extent covers it.
    pub fn flip(&mut self, off: u64, bit: u8) -> bool {
        let Some((&s, v)) = self.extents.range_mut(..=off).next_back() else {
            return false;
        };
        match v.get_mut((off - s) as usize) {
            Some(byte) => {
                *byte ^= 1 << (bit & 7);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backing(content: &[u8]) -> impl Fn(&mut [u8], u64) -> io::Result<()> + '_ {
        move |buf, off| {
            buf.fill(0);
            let off = off as usize;
            if off < content.len() {
                let n = buf.len().min(content.len() - off);
                buf[..n].copy_from_slice(&content[off..off + n]);
            }
            Ok(())
        }
    }

    fn all(d: &Dirty, content: &[u8]) -> Vec<u8> {
        d.read(0, 1 << 20, backing(content)).unwrap()
    }

    #[test]
    fn appends_grow_one_extent() {
        let mut d = Dirty::new(3);
        d.write(3, b"de");
        d.write(5, b"fg");
        assert_eq!(d.extents().count(), 1);
        assert_eq!(d.size(), 7);
        assert_eq!(d.dirty_bytes(), 4);
        assert_eq!(all(&d, b"abc"), b"abcdefg");
    }

    #[test]
    fn overlapping_writes_merge_and_newest_wins() {
        let mut d = Dirty::new(0);
        d.write(10, b"xxxx");
        d.write(0, b"aaaa");
        d.write(2, b"bbbbbbbbbb");
        assert_eq!(d.extents().count(), 1);
        assert_eq!(all(&d, b""), b"aabbbbbbbbbbxx");
        d.write(20, b"z");
        assert_eq!(d.extents().count(), 2);
        assert_eq!(d.dirty_bytes(), 15);
        assert_eq!(d.size(), 21);
    }

    #[test]
    fn truncate_hides_backing_bytes_even_after_regrowth() {
        let mut d = Dirty::new(6);
        d.set_size(2);
        assert_eq!(all(&d, b"abcdef"), b"ab");
        d.write(4, b"Z");
        assert_eq!(all(&d, b"abcdef"), b"ab\0\0Z");
        assert_eq!(d.floor(), 2);
    }

    #[test]
    fn truncate_cuts_written_extents() {
        let mut d = Dirty::new(0);
        d.write(0, b"0123456789");
        d.write(20, b"abc");
        d.set_size(5);
        assert_eq!(d.dirty_bytes(), 5);
        d.set_size(8);
        assert_eq!(all(&d, b""), b"01234\0\0\0");
    }

    #[test]
    fn partial_reads_overlay_backing() {
        let mut d = Dirty::new(10);
        d.write(4, b"XY");
        let got = d.read(3, 4, backing(b"0123456789")).unwrap();
        assert_eq!(got, b"3XY6");
        assert!(d.read(10, 4, backing(b"0123456789")).unwrap().is_empty());
    }

    #[test]
    fn flip_only_where_written() {
        let mut d = Dirty::new(4);
        d.write(4, b"\x00");
        assert!(d.flip(4, 1));
        assert!(!d.flip(3, 1));
        assert_eq!(all(&d, b"abcd"), b"abcd\x02");
    }
}
