//! The local spool: an append-only file of JSON lines, one event each, fsync'd per append.
//!
//! Replay renames the spool to `<spool>.replaying` (new appends start a fresh spool), inserts its events
//! in batches with `ON CONFLICT (id) DO NOTHING`, and deletes it only after every batch committed. A
//! crash mid-replay leaves the `.replaying` file in place; the next replay starts with it, and the
//! unique ids make the already-committed part a no-op. A torn last line (a crash mid-append) is skipped.
//!
//! A torn line must never be glued to the next append (the joined line would not parse and a later,
//! fsync'd event would be lost): a failed append cuts the file back to its length before the write, and
//! every open cuts a fragment after the last newline (counted in [`Spool::torn_fragments`]).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::LedgerError;
use crate::event::Event;

/// Longest spool line accepted on replay (an event is far smaller; a longer line is corrupt).
pub const MAX_LINE_BYTES: usize = 256 * 1024;

/// The spool files of one writer.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    replay_path: PathBuf,
    file: Mutex<Option<File>>,
    bytes: AtomicU64,
    max_bytes: u64,
    torn: AtomicU64,
}

impl Spool {
    /// Open (lazily) the spool at `path`; appends beyond `max_bytes` in total are refused.
    pub fn new(path: PathBuf, max_bytes: u64) -> Result<Self, LedgerError> {
        let mut name = path.as_os_str().to_owned();
        name.push(".replaying");
        let spool = Self {
            replay_path: PathBuf::from(name),
            path,
            file: Mutex::new(None),
            bytes: AtomicU64::new(0),
            max_bytes,
            torn: AtomicU64::new(0),
        };
        if let Some(dir) = spool.dir() {
            std::fs::create_dir_all(dir).map_err(|e| spool.err(e))?;
        }
        if spool.path.exists() {
            // Cut a fragment left by a crash now, so the size below is what replay will see.
            let _file = spool.open_for_append()?;
        }
        spool.bytes.store(spool.size_on_disk(), Ordering::Relaxed);
        Ok(spool)
    }

    /// The spool file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn dir(&self) -> Option<&Path> {
        self.path.parent().filter(|p| !p.as_os_str().is_empty())
    }

    fn err(&self, source: std::io::Error) -> LedgerError {
        LedgerError::Spool {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn size_on_disk(&self) -> u64 {
        let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        len(&self.path) + len(&self.replay_path)
    }

    /// Bytes in the spool files (as of the last append or replay).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Torn fragments (a partial last line from a crash or a failed write) cut off the spool so far.
    pub fn torn_fragments(&self) -> u64 {
        self.torn.load(Ordering::Relaxed)
    }

    /// Open the spool for appending, first cutting any partial last line back to the last newline, so
    /// the next append starts on a line of its own.
    fn open_for_append(&self) -> Result<File, LedgerError> {
        let mut f = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.err(e))?;
        let len = f.metadata().map_err(|e| self.err(e))?.len();
        let keep = last_line_end(&mut f, len).map_err(|e| self.err(e))?;
        if keep < len {
            f.set_len(keep)
                .and_then(|()| f.sync_data())
                .map_err(|e| self.err(e))?;
            self.torn.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                path = %self.path.display(),
                dropped_bytes = len - keep,
                "cut a torn line off the ledger spool"
            );
        }
        Ok(f)
    }

    /// Whether anything waits for replay.
    pub fn has_pending(&self) -> bool {
        self.bytes() > 0 || self.replay_path.exists()
    }

    /// Append events as JSON lines and fsync. All or nothing with respect to the size cap.
    pub fn append(&self, events: &[Event]) -> Result<(), LedgerError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(events.len() * 256);
        for e in events {
            let start = buf.len();
            serde_json::to_writer(&mut buf, e).map_err(|e| self.err(std::io::Error::other(e)))?;
            if buf.len() - start > MAX_LINE_BYTES {
                // Replay skips longer lines; keep the event and say what was cut.
                let bytes = buf.len() - start;
                buf.truncate(start);
                let cut = e
                    .clone()
                    .detail(serde_json::json!({ "detail_truncated_bytes": bytes }));
                serde_json::to_writer(&mut buf, &cut).map_err(|e| self.err(std::io::Error::other(e)))?;
            }
            buf.push(b'\n');
        }
        let mut guard = self
            .file
            .lock()
            .map_err(|_| self.err(std::io::Error::other("spool lock poisoned")))?;
        let len = buf.len() as u64;
        if self.bytes.load(Ordering::Relaxed) + len > self.max_bytes {
            return Err(self.err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!("spool full ({} byte cap)", self.max_bytes),
            )));
        }
        if guard.is_none() {
            *guard = Some(self.open_for_append()?);
        }
        let Some(f) = guard.as_mut() else {
            return Err(self.err(std::io::Error::other("spool not open")));
        };
        let before = match f.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                *guard = None;
                return Err(self.err(e));
            }
        };
        let res = f.write_all(&buf).and_then(|()| f.sync_data());
        if let Err(e) = res {
            // Take back whatever part of the lines reached the file; if even that fails, the next open
            // cuts the fragment.
            if f.set_len(before).and_then(|()| f.sync_data()).is_err() {
                *guard = None;
            }
            return Err(self.err(e));
        }
        self.bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// The file to replay next: a leftover `.replaying` file, else the spool renamed to it (new appends
    /// then go to a fresh spool). None when there is nothing to replay.
    pub fn take_for_replay(&self) -> Result<Option<PathBuf>, LedgerError> {
        if self.replay_path.exists() {
            return Ok(Some(self.replay_path.clone()));
        }
        let mut guard = self
            .file
            .lock()
            .map_err(|_| self.err(std::io::Error::other("spool lock poisoned")))?;
        let len = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if len == 0 {
            return Ok(None);
        }
        *guard = None;
        std::fs::rename(&self.path, &self.replay_path).map_err(|e| self.err(e))?;
        self.sync_dir();
        Ok(Some(self.replay_path.clone()))
    }

    /// The replay file was fully committed: delete it.
    pub fn finish_replay(&self) -> Result<(), LedgerError> {
        match std::fs::remove_file(&self.replay_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.err(e)),
        }
        self.sync_dir();
        let _guard = self.file.lock();
        self.bytes.store(self.size_on_disk(), Ordering::Relaxed);
        Ok(())
    }

    fn sync_dir(&self) {
        // Make the rename/unlink durable; failure only weakens crash safety, so it is not fatal.
        let dir = self.dir().unwrap_or_else(|| Path::new("."));
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// The length of `f` up to and including its last newline (0 when it has none).
fn last_line_end(f: &mut File, len: u64) -> std::io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let mut end = len;
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let Some(chunk) = buf.get_mut(..(end - start) as usize) else {
            break;
        };
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Reads a spool file in batches of events; counts lines that do not parse (torn or corrupt).
#[derive(Debug)]
pub struct SpoolReader {
    reader: BufReader<File>,
    /// Lines skipped because they did not parse or were too long.
    pub corrupt_lines: u64,
    done: bool,
}

impl SpoolReader {
    /// Open a spool file for reading.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let f = File::open(path).map_err(|source| LedgerError::Spool {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            reader: BufReader::new(f),
            corrupt_lines: 0,
            done: false,
        })
    }

    /// Up to `max` events; an empty vector at the end of the file.
    pub fn next_batch(&mut self, max: usize) -> Result<Vec<Event>, std::io::Error> {
        let mut out = Vec::new();
        let mut line = Vec::new();
        while !self.done && out.len() < max {
            line.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut line)?;
            if n == 0 {
                self.done = true;
                break;
            }
            if line.last() != Some(&b'\n') {
                if line.len() > MAX_LINE_BYTES {
                    // Too long: skip to the end of this line.
                    self.corrupt_lines += 1;
                    let mut rest = Vec::new();
                    loop {
                        rest.clear();
                        let m = (&mut self.reader)
                            .take(MAX_LINE_BYTES as u64)
                            .read_until(b'\n', &mut rest)?;
                        if m == 0 || rest.last() == Some(&b'\n') {
                            break;
                        }
                    }
                    continue;
                }
                // A torn final line (crash mid-append): never fsync'd, so never acknowledged.
                self.corrupt_lines += 1;
                self.done = true;
                break;
            }
            match serde_json::from_slice::<Event>(&line) {
                Ok(e) => out.push(e),
                Err(_) => self.corrupt_lines += 1,
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Actor, EventKind};

    fn ev(i: u32) -> Event {
        Event::new(EventKind::Quarantined, Actor::Checker, "b", format!("s{i}"))
    }

    #[test]
    fn append_take_read_finish() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("sub/spool.jsonl"), 1 << 20).unwrap();
        assert!(!spool.has_pending());
        let evs: Vec<Event> = (0..5).map(ev).collect();
        spool.append(&evs[..3]).unwrap();
        let replay = spool.take_for_replay().unwrap().unwrap();
        // appends during a replay go to a fresh spool
        spool.append(&evs[3..]).unwrap();
        let mut r = SpoolReader::open(&replay).unwrap();
        assert_eq!(r.next_batch(2).unwrap(), evs[..2].to_vec());
        assert_eq!(r.next_batch(2).unwrap(), evs[2..3].to_vec());
        assert!(r.next_batch(2).unwrap().is_empty());
        // not finished: the same file is offered again (crash mid-replay)
        assert_eq!(spool.take_for_replay().unwrap(), Some(replay.clone()));
        spool.finish_replay().unwrap();
        let next = spool.take_for_replay().unwrap().unwrap();
        assert_eq!(
            SpoolReader::open(&next).unwrap().next_batch(10).unwrap(),
            evs[3..].to_vec()
        );
        spool.finish_replay().unwrap();
        assert_eq!(spool.take_for_replay().unwrap(), None);
        assert_eq!(spool.bytes(), 0);
    }

    #[test]
    fn torn_and_corrupt_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let good = serde_json::to_string(&ev(1)).unwrap();
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        let text = format!("{good}\nnot json\n{long}\n{good}\n{{\"id\":\"tor");
        std::fs::write(&path, text).unwrap();
        let mut r = SpoolReader::open(&path).unwrap();
        let got = r.next_batch(100).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(r.corrupt_lines, 3);
    }

    #[test]
    fn oversized_details_are_cut_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("spool"), 1 << 24).unwrap();
        let big = ev(1).detail(serde_json::json!({ "blob": "x".repeat(MAX_LINE_BYTES) }));
        spool.append(std::slice::from_ref(&big)).unwrap();
        let path = spool.take_for_replay().unwrap().unwrap();
        let got = SpoolReader::open(&path).unwrap().next_batch(10).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, big.id);
        assert!(got[0].detail["detail_truncated_bytes"].as_u64().unwrap() > MAX_LINE_BYTES as u64);
    }

    #[test]
    fn a_torn_fragment_does_not_swallow_the_next_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let good = serde_json::to_string(&ev(1)).unwrap();
        // A crash mid-append: the last line has no newline.
        std::fs::write(&path, format!("{good}\n{{\"id\":\"tor")).unwrap();
        let spool = Spool::new(path.clone(), 1 << 20).unwrap();
        assert_eq!(spool.torn_fragments(), 1);
        assert_eq!(spool.bytes(), good.len() as u64 + 1);
        let next = ev(2);
        spool.append(std::slice::from_ref(&next)).unwrap();
        let replay = spool.take_for_replay().unwrap().unwrap();
        let mut r = SpoolReader::open(&replay).unwrap();
        assert_eq!(r.next_batch(10).unwrap(), vec![ev_from(&good), next]);
        assert_eq!(r.corrupt_lines, 0);
    }

    #[test]
    fn a_fragment_without_any_newline_is_cut_to_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        // Longer than one read chunk, so the backwards scan crosses chunks.
        std::fs::write(&path, "x".repeat(200 * 1024)).unwrap();
        let spool = Spool::new(path.clone(), 1 << 20).unwrap();
        assert_eq!(spool.torn_fragments(), 1);
        assert_eq!(spool.bytes(), 0);
        let next = ev(3);
        spool.append(std::slice::from_ref(&next)).unwrap();
        let replay = spool.take_for_replay().unwrap().unwrap();
        assert_eq!(
            SpoolReader::open(&replay).unwrap().next_batch(10).unwrap(),
            vec![next]
        );
    }

    #[test]
    fn a_fragment_written_before_the_lazy_open_is_cut_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let spool = Spool::new(path.clone(), 1 << 20).unwrap();
        let first = ev(4);
        spool.append(std::slice::from_ref(&first)).unwrap();
        // The file handle is dropped on a failed write; model the fragment such a write leaves.
        *spool.file.lock().unwrap() = None;
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"id\":").unwrap();
        drop(f);
        let second = ev(5);
        spool.append(std::slice::from_ref(&second)).unwrap();
        assert_eq!(spool.torn_fragments(), 1);
        let replay = spool.take_for_replay().unwrap().unwrap();
        let mut r = SpoolReader::open(&replay).unwrap();
        assert_eq!(r.next_batch(10).unwrap(), vec![first, second]);
        assert_eq!(r.corrupt_lines, 0);
    }

    fn ev_from(line: &str) -> Event {
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn the_size_cap_refuses_appends() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("spool"), 300).unwrap();
        spool.append(&[ev(1)]).unwrap();
        assert!(spool.append(&[ev(2), ev(3)]).is_err());
        assert!(spool.bytes() < 300);
    }
}
