//! Snapshots of a partition: what they contain, how they are read consistently, and how they
//! travel.
//!
//! A snapshot is the partition at an applied Raft log id: the handler's state and the event log
//! up to `last_offset`, exactly as RocksDB holds them. Nothing is copied to make one: a snapshot
//! is a RocksDB point-in-time view ([`OwnedView`], O(1) to take) plus the applied position read
//! through it, and its bytes are produced from that view only when they are read — when the
//! leader sends the snapshot to a follower that is behind the purged log. Building one therefore
//! costs the same at a thousand messages as at ten million, and never holds the write path: the
//! state machine's write lock is held only while the view is taken.
//!
//! What travels is a **stream of parts**: [`STREAM_MAGIC`], then parts, each a little-endian u32
//! length and a crc32-framed protobuf `SnapshotContent` (proto/proto/log.proto) holding at most
//! about [`PART_BYTES`] of the handler state or of the event log (state first, then events in
//! offset order), each with the sender's data format and the snapshot's last offset, then a
//! zero length that ends the stream (so a stream cut at a part's end is not taken whole). A snapshot
//! damaged in transit or at rest fails a part's checksum, and one of a format this node does not
//! read is refused, instead of being installed. The sender produces parts from its view as
//! openraft reads the stream (in `snapshot_max_chunk_size` chunks); the receiver writes what
//! arrives to a file beside the database and installs it part by part (`state_machine.rs`, the
//! install journal). So neither side's memory grows with the partition.

use std::io::{self, Read, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use chat_proto::log as pb;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

pub use crate::apply::StateEntries;
use crate::codec::{self, cf, StateNs};
use crate::engine::{Engine, OwnedView, StoreError};
use crate::types::{LogOffset, Node, NodeId, PartitionId};
use crate::wire::{decode, Malformed, Wire, DATA_FORMAT};

pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;

/// The first bytes of a snapshot stream. A snapshot without them is the single frame a release
/// before 0.2.1 sent (read whole, for rolling upgrades).
pub const STREAM_MAGIC: &[u8; 8] = b"chatsnp2";
/// About the most entry bytes one part holds (a part ends after the entry that passes it).
pub const PART_BYTES: usize = 1 << 20;
/// Largest part a reader accepts: a damaged length must not make it allocate gigabytes.
const MAX_PART_BYTES: usize = 256 << 20;

/// One part of a partition snapshot: some of its handler state or some of its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotContent {
    pub last_offset: LogOffset,
    /// Handler state entries (keys within the handler's namespace).
    pub state: StateEntries,
    /// Encoded `LogEvent`s with their offsets.
    pub events: Vec<(LogOffset, Vec<u8>)>,
}

impl SnapshotContent {
    /// The part as one crc32 frame. Consumes the content: entries are moved into the message
    /// rather than copied.
    pub fn into_frame(self) -> Vec<u8> {
        codec::frame(&prost::Message::encode_to_vec(&self.into_pb()))
    }

    /// The part as it appears in a snapshot stream: its frame's length, then the frame.
    fn into_stream_bytes(self) -> Vec<u8> {
        let frame = self.into_frame();
        let mut out = Vec::with_capacity(4 + frame.len());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
        out
    }

    fn into_pb(self) -> pb::SnapshotContent {
        pb::SnapshotContent {
            format: DATA_FORMAT,
            last_offset: self.last_offset.0,
            state: state_pb(&self.state),
            events: self
                .events
                .into_iter()
                .map(|(offset, event)| pb::SnapshotEvent {
                    offset: offset.0,
                    event,
                })
                .collect(),
        }
    }

    pub fn from_frame(partition: PartitionId, bytes: &[u8]) -> Result<Self, StoreError> {
        let payload = codec::unframe("snapshot data", &partition.0.to_be_bytes(), bytes)?;
        decode("snapshot data", payload)
    }
}

fn state_pb(state: &StateEntries) -> Vec<pb::StateEntry> {
    state
        .iter()
        .map(|(key, value)| pb::StateEntry {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

fn state_from(state: Vec<pb::StateEntry>) -> StateEntries {
    state.into_iter().map(|e| (e.key, e.value)).collect()
}

impl Wire for SnapshotContent {
    type Pb = pb::SnapshotContent;
    fn to_pb(&self) -> pb::SnapshotContent {
        self.clone().into_pb()
    }
    fn from_pb(pb: pb::SnapshotContent) -> Result<Self, Malformed> {
        if pb.format != DATA_FORMAT {
            return Err(Malformed(format!(
                "snapshot of data format {}; this node reads format {DATA_FORMAT}",
                pb.format
            )));
        }
        Ok(SnapshotContent {
            last_offset: LogOffset(pb.last_offset),
            state: state_from(pb.state),
            events: pb
                .events
                .into_iter()
                .map(|e| (LogOffset(e.offset), e.event))
                .collect(),
        })
    }
}

/// What a snapshot this node took reads from: a view of its database.
struct Source {
    engine: Arc<Engine>,
    partition: PartitionId,
    view: OwnedView,
    last_offset: LogOffset,
}

impl Source {
    /// About [`PART_BYTES`] of handler state from key `from` on, and the key the next part
    /// starts at (`None`: no more).
    fn state_from(&self, from: &[u8]) -> Result<(StateEntries, Option<Vec<u8>>), StoreError> {
        let p = self.partition;
        let skip = codec::state_key(p, StateNs::Handler, b"").len();
        let start = codec::state_key(p, StateNs::Handler, from);
        let end = codec::state_key(p, StateNs::Handler.next(), b"");
        let mut entries = Vec::new();
        let mut bytes = 0;
        for item in self
            .engine
            .scan_at(Some(self.view.at()), cf::STATE, &start, end)
        {
            let (key, value) = item?;
            let key = key[skip..].to_vec();
            if bytes >= PART_BYTES {
                return Ok((entries, Some(key)));
            }
            bytes += key.len() + value.len();
            entries.push((key, value));
        }
        Ok((entries, None))
    }

    /// About [`PART_BYTES`] of events from offset `from` on (checked), and the offset the next
    /// part starts at (`None`: no more).
    #[allow(clippy::type_complexity)]
    fn events_from(
        &self,
        from: LogOffset,
    ) -> Result<(Vec<(LogOffset, Vec<u8>)>, Option<LogOffset>), StoreError> {
        let p = self.partition;
        let start = codec::event_key(p, from);
        let end = codec::event_key(p, self.last_offset.next()).to_vec();
        let mut events = Vec::new();
        let mut bytes = 0;
        for item in self
            .engine
            .scan_at(Some(self.view.at()), cf::EVENTS, &start, end)
        {
            let (key, event) = item?;
            let offset = LogOffset(codec::key_u64(&key).expect("event keys are 12 bytes"));
            if bytes >= PART_BYTES {
                return Ok((events, Some(offset)));
            }
            bytes += event.len() + 8;
            events.push((offset, event));
        }
        Ok((events, None))
    }
}

/// Where the next part of a snapshot starts.
enum Next {
    /// Handler state from this key on.
    State(Vec<u8>),
    /// Events from this offset on.
    Events(LogOffset),
    Done,
}

/// The parts of a snapshot, produced from its view one at a time (always at least one: an
/// empty partition still sends its last offset).
struct Parts {
    next: Next,
    produced_any: bool,
}

impl Parts {
    fn new() -> Self {
        Parts {
            next: Next::State(Vec::new()),
            produced_any: false,
        }
    }

    fn next_part(&mut self, source: &Source) -> Result<Option<SnapshotContent>, StoreError> {
        loop {
            let mut part = SnapshotContent {
                last_offset: source.last_offset,
                state: Vec::new(),
                events: Vec::new(),
            };
            match std::mem::replace(&mut self.next, Next::Done) {
                Next::State(from) => {
                    let (entries, more) = source.state_from(&from)?;
                    self.next = more.map_or(Next::Events(LogOffset(1)), Next::State);
                    part.state = entries;
                }
                Next::Events(from) => {
                    let (events, more) = source.events_from(from)?;
                    self.next = more.map_or(Next::Done, Next::Events);
                    part.events = events;
                }
                Next::Done if self.produced_any => return Ok(None),
                Next::Done => {}
            }
            let last_chance = matches!(self.next, Next::Done) && !self.produced_any;
            if !part.state.is_empty() || !part.events.is_empty() || last_chance {
                self.produced_any = true;
                return Ok(Some(part));
            }
        }
    }
}

/// A snapshot this node took, as the byte stream openraft reads in chunks and seeks in: the
/// bytes around the read position are the magic or one part, produced when reached. openraft
/// reads forward (seeking back only to resend from the start after a mismatch), so a whole
/// send produces each part once, plus one pass that only measures the stream's length.
struct Outgoing {
    source: Source,
    parts: Parts,
    /// The stream's bytes from `buf_start` on: the magic or the current part.
    buf: Vec<u8>,
    buf_start: u64,
    pos: u64,
    len: Option<u64>,
    /// Whether the end mark is produced (the last thing in the stream).
    ended: bool,
}

/// The zero length that ends a stream.
const END_MARK: [u8; 4] = [0; 4];

impl Outgoing {
    fn new(source: Source) -> Self {
        Outgoing {
            source,
            parts: Parts::new(),
            buf: STREAM_MAGIC.to_vec(),
            buf_start: 0,
            pos: 0,
            len: None,
            ended: false,
        }
    }

    /// The stream's length, produced (not kept) once to measure it.
    fn len(&mut self) -> Result<u64, StoreError> {
        if let Some(len) = self.len {
            return Ok(len);
        }
        let mut parts = Parts::new();
        let mut len = (STREAM_MAGIC.len() + END_MARK.len()) as u64;
        while let Some(part) = parts.next_part(&self.source)? {
            len += part.into_stream_bytes().len() as u64;
        }
        self.len = Some(len);
        metrics::counter!("chatd_snapshots_sent_total").increment(1);
        Ok(len)
    }

    /// The stream's bytes from the read position to the end of what is produced (empty at
    /// the end of the stream).
    fn at_pos(&mut self) -> Result<&[u8], StoreError> {
        if self.pos < self.buf_start {
            self.parts = Parts::new();
            self.buf = STREAM_MAGIC.to_vec();
            self.buf_start = 0;
            self.ended = false;
        }
        while self.pos >= self.buf_start + self.buf.len() as u64 {
            let next = match self.parts.next_part(&self.source)? {
                Some(part) => part.into_stream_bytes(),
                None if !self.ended => {
                    self.ended = true;
                    END_MARK.to_vec()
                }
                None => return Ok(&[]),
            };
            self.buf_start += self.buf.len() as u64;
            self.buf = next;
        }
        Ok(&self.buf[(self.pos - self.buf_start) as usize..])
    }
}

/// Reads the parts of a snapshot stream one at a time, checking each.
pub(crate) struct PartReader<R> {
    partition: PartitionId,
    input: R,
    last_offset: Option<LogOffset>,
    /// Whether the end mark has been read.
    ended: bool,
    /// For the single frame an earlier release sent: the frame until it is read, then `None`
    /// (the stream is over). `None` from the start for a stream of parts.
    legacy: Option<Option<Vec<u8>>>,
}

impl<R: Read> PartReader<R> {
    pub(crate) fn new(partition: PartitionId, mut input: R) -> Result<Self, StoreError> {
        let mut magic = Vec::with_capacity(STREAM_MAGIC.len());
        (&mut input)
            .take(STREAM_MAGIC.len() as u64)
            .read_to_end(&mut magic)
            .map_err(|e| io_error(partition, e))?;
        let legacy = if magic.as_slice() == STREAM_MAGIC {
            None
        } else {
            input
                .read_to_end(&mut magic)
                .map_err(|e| io_error(partition, e))?;
            Some(Some(magic))
        };
        Ok(PartReader {
            partition,
            input,
            last_offset: None,
            ended: false,
            legacy,
        })
    }

    /// The next part (`None`: the stream is over), checked: its crc32, its data format, and
    /// the same last offset as every other part.
    pub(crate) fn next_part(&mut self) -> Result<Option<SnapshotContent>, StoreError> {
        let p = self.partition;
        let frame = match &mut self.legacy {
            Some(legacy) => match legacy.take() {
                Some(frame) => frame,
                None => return Ok(None),
            },
            None => match self.read_frame()? {
                Some(frame) => frame,
                None => return Ok(None),
            },
        };
        let part = SnapshotContent::from_frame(p, &frame)?;
        match self.last_offset {
            Some(last) if last != part.last_offset => Err(StoreError::decode(
                format!("snapshot data of {p}"),
                format!(
                    "a part ends at offset {} and another at {last}",
                    part.last_offset
                ),
            )),
            _ => {
                self.last_offset = Some(part.last_offset);
                Ok(Some(part))
            }
        }
    }

    /// The next part's frame of a stream (`None` at its end mark).
    fn read_frame(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        let p = self.partition;
        if self.ended {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        match read_full(&mut self.input, &mut len).map_err(|e| io_error(p, e))? {
            4 => {}
            0 => return Err(damaged(p, "it ends without its end mark".into())),
            n => {
                return Err(damaged(
                    p,
                    format!("it ends {n} bytes into a part's length"),
                ))
            }
        }
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 {
            self.ended = true;
            return Ok(None);
        }
        if len > MAX_PART_BYTES {
            return Err(damaged(p, format!("a part claims {len} bytes")));
        }
        // Grown as bytes arrive beyond what a part normally holds, not allocated from the
        // length: a damaged length must not cost memory the stream does not have.
        let mut frame = Vec::with_capacity(len.min(2 * PART_BYTES));
        (&mut self.input)
            .take(len as u64)
            .read_to_end(&mut frame)
            .map_err(|e| io_error(p, e))?;
        let n = frame.len();
        if n < len {
            return Err(damaged(
                p,
                format!("it ends {n} bytes into a part of {len}"),
            ));
        }
        Ok(Some(frame))
    }
}

/// Read until `buf` is full or the input ends; how many bytes were read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn damaged(p: PartitionId, detail: String) -> StoreError {
    StoreError::decode(format!("snapshot data of {p}"), detail)
}

fn io_error(p: PartitionId, e: io::Error) -> StoreError {
    StoreError::decode(format!("the snapshot file of {p}"), e)
}

/// Where received snapshots are kept until installed: a directory inside the database's, which
/// RocksDB leaves alone.
pub(crate) fn incoming_dir(engine: &Engine) -> PathBuf {
    engine.path().join("snapshot-in")
}

/// The file a snapshot of `p` is received into.
pub(crate) fn receiving_path(engine: &Engine, p: PartitionId) -> PathBuf {
    incoming_dir(engine).join(format!("{}.receiving", p.0))
}

/// The file a received snapshot of `p` is installed from (see the install journal in
/// `state_machine.rs`); it is kept until the install is done, so a crash part way through
/// finishes it at the next start.
pub(crate) fn installing_path(engine: &Engine, p: PartitionId) -> PathBuf {
    incoming_dir(engine).join(format!("{}.installing", p.0))
}

/// Rename `from` to `to` durably (the directory entry synced too).
pub(crate) fn rename_synced(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The bytes of a partition snapshot as openraft sees them: one this node took (produced from
/// its RocksDB view as it is read, see [`Outgoing`]), or one being received (a file).
pub struct SnapshotData {
    state: DataState,
}

enum DataState {
    Outgoing(Box<Outgoing>),
    Incoming {
        file: tokio::fs::File,
        path: PathBuf,
    },
}

impl SnapshotData {
    /// A file to receive a snapshot of `p` into (replacing what an interrupted receive left).
    pub(crate) async fn receiving(engine: &Engine, p: PartitionId) -> io::Result<Self> {
        tokio::fs::create_dir_all(incoming_dir(engine)).await?;
        let path = receiving_path(engine, p);
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await?;
        Ok(SnapshotData {
            state: DataState::Incoming { file, path },
        })
    }

    /// The snapshot of `partition` that `view` sees, whose event log ends at `last_offset`.
    pub(crate) fn deferred(
        engine: Arc<Engine>,
        partition: PartitionId,
        view: OwnedView,
        last_offset: LogOffset,
    ) -> Self {
        SnapshotData {
            state: DataState::Outgoing(Box::new(Outgoing::new(Source {
                engine,
                partition,
                view,
                last_offset,
            }))),
        }
    }

    /// The file a snapshot to install into `p` is in, with all of it on disk: the file it
    /// was received into, or — for one this node took (openraft's storage suite installs those)
    /// — a file it is written to now, part by part.
    pub(crate) async fn into_received(
        self,
        engine: &Engine,
        p: PartitionId,
    ) -> Result<PathBuf, StoreError> {
        let file_error =
            |path: &Path, e: io::Error| StoreError::decode(format!("{}", path.display()), e);
        match self.state {
            DataState::Incoming { file, path } => {
                file.sync_all().await.map_err(|e| file_error(&path, e))?;
                Ok(path)
            }
            DataState::Outgoing(mut out) => {
                let path = receiving_path(engine, p);
                let mut write = || -> io::Result<()> {
                    std::fs::create_dir_all(incoming_dir(engine))?;
                    let mut file = std::fs::File::create(&path)?;
                    out.pos = 0;
                    loop {
                        let bytes = out.at_pos().map_err(io::Error::other)?;
                        if bytes.is_empty() {
                            break;
                        }
                        io::Write::write_all(&mut file, bytes)?;
                        out.pos += bytes.len() as u64;
                    }
                    file.sync_all()
                };
                write().map_err(|e| file_error(&path, e))?;
                Ok(path)
            }
        }
    }
}

fn unsupported(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, what.to_string())
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            DataState::Incoming { file, .. } => Pin::new(file).poll_read(cx, buf),
            DataState::Outgoing(out) => {
                let pos = match out.at_pos() {
                    Ok(bytes) => {
                        let n = bytes.len().min(buf.remaining());
                        buf.put_slice(&bytes[..n]);
                        n
                    }
                    Err(e) => return Poll::Ready(Err(io::Error::other(e))),
                };
                out.pos += pos as u64;
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().state {
            DataState::Incoming { file, .. } => Pin::new(file).poll_write(cx, buf),
            DataState::Outgoing(_) => Poll::Ready(Err(unsupported(
                "a snapshot this node took is not written to",
            ))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            DataState::Incoming { file, .. } => Pin::new(file).poll_flush(cx),
            DataState::Outgoing(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            DataState::Incoming { file, .. } => Pin::new(file).poll_shutdown(cx),
            DataState::Outgoing(_) => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        match &mut self.get_mut().state {
            DataState::Incoming { file, .. } => Pin::new(file).start_seek(position),
            DataState::Outgoing(out) => {
                let target = match position {
                    SeekFrom::Start(n) => Some(n),
                    SeekFrom::End(d) => out.len().map_err(io::Error::other)?.checked_add_signed(d),
                    SeekFrom::Current(d) => out.pos.checked_add_signed(d),
                };
                out.pos = target.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "seek before the start")
                })?;
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        match &mut self.get_mut().state {
            DataState::Incoming { file, .. } => Pin::new(file).poll_complete(cx),
            DataState::Outgoing(out) => Poll::Ready(Ok(out.pos)),
        }
    }
}

/// Where a release before 0.2.1 kept a copy of the partition's handler state per snapshot (cf
/// `snapshots`); nothing is written there now, and a leftover copy is deleted at open.
pub(crate) fn legacy_manifest_key(p: PartitionId) -> Vec<u8> {
    codec::partition_start(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_snapshot_data_fails_its_checksum() {
        let content = SnapshotContent {
            last_offset: LogOffset(2),
            state: vec![(b"k".to_vec(), b"v".to_vec())],
            events: vec![
                (LogOffset(1), b"one".to_vec()),
                (LogOffset(2), b"two".to_vec()),
            ],
        };
        let mut bytes = content.clone().into_frame();
        assert_eq!(
            SnapshotContent::from_frame(PartitionId(4), &bytes).unwrap(),
            content
        );
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        match SnapshotContent::from_frame(PartitionId(4), &bytes) {
            Err(StoreError::Corrupt(c)) => assert!(c.detail.contains("checksum mismatch"), "{c}"),
            other => panic!("expected a checksum error, got {other:?}"),
        }
    }

    #[test]
    fn a_snapshot_of_another_data_format_is_refused() {
        let mut pb = SnapshotContent {
            last_offset: LogOffset(0),
            state: Vec::new(),
            events: Vec::new(),
        }
        .to_pb();
        pb.format = DATA_FORMAT + 1;
        let bytes = codec::frame(&prost::Message::encode_to_vec(&pb));
        let err = SnapshotContent::from_frame(PartitionId(0), &bytes).unwrap_err();
        assert!(
            err.to_string().contains("snapshot of data format 2"),
            "{err}"
        );
    }

    fn part(last: u64, events: &[u64]) -> SnapshotContent {
        SnapshotContent {
            last_offset: LogOffset(last),
            state: Vec::new(),
            events: events
                .iter()
                .map(|&o| (LogOffset(o), format!("event {o}").into_bytes()))
                .collect(),
        }
    }

    fn stream(parts: &[SnapshotContent]) -> Vec<u8> {
        let mut bytes = STREAM_MAGIC.to_vec();
        for part in parts {
            bytes.extend(part.clone().into_stream_bytes());
        }
        bytes.extend(END_MARK);
        bytes
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<SnapshotContent>, StoreError> {
        let mut reader = PartReader::new(PartitionId(1), bytes)?;
        let mut parts = Vec::new();
        while let Some(part) = reader.next_part()? {
            parts.push(part);
        }
        Ok(parts)
    }

    #[test]
    fn a_stream_of_parts_reads_back_part_by_part() {
        let parts = vec![part(4, &[1, 2]), part(4, &[3]), part(4, &[4])];
        assert_eq!(read_all(&stream(&parts)).unwrap(), parts);
    }

    #[test]
    fn a_single_frame_of_an_earlier_release_still_reads() {
        let whole = part(2, &[1, 2]);
        assert_eq!(read_all(&whole.clone().into_frame()).unwrap(), vec![whole]);
    }

    #[test]
    fn a_cut_or_inconsistent_stream_is_refused() {
        let bytes = stream(&[part(2, &[1]), part(2, &[2])]);
        // Cut inside the end mark, exactly before it (after a whole part), inside a part, and
        // inside the first part's length.
        let whole_parts = bytes.len() - END_MARK.len();
        for cut in [
            bytes.len() - 1,
            whole_parts,
            whole_parts - 3,
            STREAM_MAGIC.len() + 2,
        ] {
            let err = read_all(&bytes[..cut]).unwrap_err();
            assert!(err.to_string().contains("snapshot data of"), "{err}");
        }
        let err = read_all(&stream(&[part(2, &[1]), part(3, &[2])])).unwrap_err();
        assert!(err.to_string().contains("another at"), "{err}");
    }
}
