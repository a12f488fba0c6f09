//! The cache's disk tier: entries in one folder, bounded in bytes, kept across restarts.
//!
//! Each entry is one file, written under a temporary name and renamed into place, so a
//! reader (or a restart) finds a whole entry or none. A file holds the cache key, the
//! response head and its RFC 9111 policy (as JSON), then the body, then a CRC-32 of all
//! before it: a file that fails any check is deleted, never served. An index in memory
//! (key to file, rebuilt from the folder's headers at startup) orders entries by use and
//! deletes the files it evicts, which keeps the folder under its size.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_cache_semantics::CachePolicy;
use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use serde::{Deserialize, Serialize};

use super::Entry;

/// The first bytes of every entry file (the last one is the format's version).
const MAGIC: &[u8; 8] = b"usher\0c1";
/// Entry files end in this; nothing else in the folder is read or removed, except
/// leftovers of interrupted writes (tempfile's `.tmp` names).
const SUFFIX: &str = ".entry";
/// The longest header accepted (the key, the response head and its policy).
const MAX_META: usize = 1 << 20;
/// Bytes around the header and body: magic, header length, CRC.
const FRAME: u64 = 8 + 4 + 4;
/// Temporary files start with this (removed at startup: writes a crash interrupted).
const TEMP_PREFIX: &str = ".usher-tmp";

/// The disk tier.
pub struct Disk {
    dir: PathBuf,
    index: moka::sync::Cache<Arc<str>, Arc<EntryFile>>,
    /// Makes file names unique within this run; `run` across runs.
    seq: AtomicU64,
    run: u128,
    /// Writes under way, which a drain lets finish.
    writes: tokio_util::task::TaskTracker,
    /// Keys with a write or read under way, with the flag a removal of that key raises:
    /// the write is then undone, the read not kept.
    busy: Mutex<HashMap<Arc<str>, Busy>>,
}

/// A busy key's removal flag, and how many tickets hold it.
type Busy = (Arc<AtomicBool>, usize);

/// Where one entry is, its size on disk, and when its response was stored.
#[derive(Debug)]
struct EntryFile {
    path: PathBuf,
    size: u64,
    stored: SystemTime,
}

/// A write or read under way for one key; see [`Disk::busy`].
pub struct Ticket {
    key: Arc<str>,
    removed: Arc<AtomicBool>,
}

impl Ticket {
    /// Whether the key was removed (purged, invalidated) since the ticket was taken.
    pub fn removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }
}

/// An entry's header as stored.
#[derive(Serialize, Deserialize)]
struct Meta {
    key: String,
    #[serde(with = "http_serde::status_code")]
    status: StatusCode,
    #[serde(with = "http_serde::header_map")]
    headers: HeaderMap,
    policy: CachePolicy,
    stored: SystemTime,
    body_len: u64,
}

impl Disk {
    /// Opens (creating it if need be) the folder `dir`, holding at most `capacity` bytes,
    /// and indexes the entries a previous run left there. Fails when the folder cannot be
    /// created or written: the error says which.
    pub fn open(dir: &Path, capacity: u64) -> Result<Arc<Disk>, String> {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create it: {e}"))?;
        // writable, proven by writing (permissions alone miss read-only mounts)
        tempfile::NamedTempFile::new_in(dir)
            .map_err(|e| format!("cannot write in it: {}", e.kind()))?;
        let index = moka::sync::Cache::builder()
            .max_capacity(capacity)
            // every entry written is admitted; the least recently used go first
            .eviction_policy(EvictionPolicy::lru())
            .weigher(|_: &Arc<str>, f: &Arc<EntryFile>| u32::try_from(f.size).unwrap_or(u32::MAX))
            .eviction_listener(|_, f: Arc<EntryFile>, _| remove(&f.path))
            .build();
        let run = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let disk = Disk {
            dir: dir.to_owned(),
            index,
            seq: AtomicU64::new(0),
            run,
            writes: tokio_util::task::TaskTracker::new(),
            busy: Mutex::new(HashMap::new()),
        };
        disk.load().map_err(|e| format!("cannot read it: {e}"))?;
        Ok(Arc::new(disk))
    }

    /// Indexes the entries in the folder, oldest first (so the newest of two files for one
    /// key wins, and a smaller bound than last time evicts the oldest), and deletes the
    /// leftovers of interrupted writes and the files that are not whole entries.
    fn load(&self) -> io::Result<()> {
        let mut found = Vec::new();
        for item in fs::read_dir(&self.dir)? {
            let item = item?;
            let path = item.path();
            let name = item.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TEMP_PREFIX) {
                remove(&path);
            } else if name.ends_with(SUFFIX) {
                match read_meta(&path) {
                    Ok((meta, size)) => found.push((meta.stored, meta.key, path, size)),
                    Err(e) if is_damage(&e) => {
                        tracing::warn!(file = %path.display(), error = %e, "dropping a damaged cache entry");
                        remove(&path);
                    }
                    // unreadable now (permissions, no file handles): left for a later run
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "skipping a cache entry")
                    }
                }
            }
        }
        found.sort_by_key(|f| f.0);
        let count = found.len();
        for (stored, key, path, size) in found {
            let file = Arc::new(EntryFile { path, size, stored });
            self.index.insert(key.into(), file);
        }
        self.index.run_pending_tasks();
        tracing::info!(
            folder = %self.dir.display(),
            found = count,
            kept = self.index.entry_count(),
            bytes = self.index.weighted_size(),
            "disk cache loaded"
        );
        Ok(())
    }

    /// Reads the entry stored for `key`, if any. A damaged file is deleted and reads as
    /// none. (Take a [`Ticket`] before, to learn of a removal meanwhile.)
    pub async fn read(&self, key: &Arc<str>) -> Option<Entry> {
        let file = self.index.get(key)?;
        let (path, k) = (file.path.clone(), key.clone());
        let read = tokio::task::spawn_blocking(move || read_entry(&path, &k))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
        match read {
            Ok(entry) => Some(entry),
            Err(e) if is_damage(&e) => {
                tracing::warn!(file = %file.path.display(), error = %e, "dropping a damaged cache entry");
                // unless a newer file replaced it meanwhile
                self.remove_exactly(key, &file);
                None
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(file = %file.path.display(), error = %e, "cannot read a cache entry");
                }
                None
            }
        }
    }

    /// Marks `key` busy until the ticket is released. Take it before the entry goes into
    /// the memory tier (or the index is read): a removal deletes from the index first and
    /// then flags the busy keys, so it either finds the entry or flags the ticket.
    pub fn ticket(&self, key: &Arc<str>) -> Ticket {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let slot = busy
            .entry(key.clone())
            .or_insert_with(|| (Arc::new(AtomicBool::new(false)), 0));
        slot.1 += 1;
        Ticket {
            key: key.clone(),
            removed: slot.0.clone(),
        }
    }

    /// Ends a ticket.
    pub fn release(&self, ticket: Ticket) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = busy.get_mut(&ticket.key) {
            if Arc::ptr_eq(&slot.0, &ticket.removed) {
                slot.1 -= 1;
                if slot.1 == 0 {
                    busy.remove(&ticket.key);
                }
            }
        }
    }

    /// Raises the flag of every busy key that `matches` (and forgets them: a later ticket
    /// for the key is for a later entry).
    fn flag_removed(&self, matches: impl Fn(&str) -> bool) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.retain(|k, (flag, _)| {
            let hit = matches(k);
            if hit {
                flag.store(true, Ordering::SeqCst);
            }
            !hit
        });
    }

    /// Writes `entry` for `key` in the background (temporary file, then rename), replacing
    /// an older file stored for it. A removal of the key while the write is under way
    /// (flagged on `ticket`) undoes it.
    pub fn write(self: &Arc<Self>, key: Arc<str>, entry: Arc<Entry>, ticket: Ticket) {
        let disk = self.clone();
        self.writes.spawn_blocking(move || {
            match disk.write_now(&key, &entry) {
                Ok(file) if ticket.removed() => disk.remove_exactly(&key, &file),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(folder = %disk.dir.display(), error = %e, "cannot write a cache entry to disk")
                }
            }
            disk.release(ticket);
        });
    }

    fn write_now(&self, key: &Arc<str>, entry: &Entry) -> io::Result<Arc<EntryFile>> {
        let bytes = encode(key, entry)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&self.dir)?;
        tmp.write_all(&bytes)?;
        // names are unique (this run's start time and a counter): a plain rename
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{:x}-{seq:x}{SUFFIX}", self.run));
        tmp.persist(&path).map_err(|e| e.error)?;
        let file = Arc::new(EntryFile {
            path,
            size: bytes.len() as u64,
            stored: entry.stored,
        });
        // Two writes for one key may finish in either order: the newer response stays. The
        // file it replaces (or this one) is deleted by the eviction listener.
        let mine = file.clone();
        self.index
            .entry(key.clone())
            .and_compute_with(|cur| match cur {
                Some(c) if c.value().stored > mine.stored => {
                    remove(&mine.path);
                    Op::Nop
                }
                _ => Op::Put(mine),
            });
        self.index.run_pending_tasks();
        Ok(file)
    }

    /// Drops `key`'s entry if it is still `file` (not a newer one).
    fn remove_exactly(&self, key: &Arc<str>, file: &Arc<EntryFile>) {
        self.index
            .entry(key.clone())
            .and_compute_with(|cur| match cur {
                Some(c) if Arc::ptr_eq(c.value(), file) => Op::Remove,
                _ => Op::Nop,
            });
    }

    /// Waits for the writes under way (at shutdown, so a restart finds them).
    pub async fn flush(&self) {
        self.writes.close();
        self.writes.wait().await;
        self.writes.reopen();
    }

    /// The bytes its files take.
    pub fn bytes(&self) -> u64 {
        self.index.weighted_size()
    }

    /// Drops the entry for exactly `key`.
    pub fn remove(&self, key: &str) {
        self.index.invalidate(key);
        self.flag_removed(|k| k == key);
    }

    /// Drops every entry whose key `matches`, at once (files included).
    pub fn remove_if(&self, matches: impl Fn(&str) -> bool) {
        let doomed: Vec<Arc<Arc<str>>> = self
            .index
            .iter()
            .filter(|(k, _)| matches(k))
            .map(|(k, _)| k)
            .collect();
        for k in doomed {
            self.index.invalidate(k.as_ref());
        }
        self.flag_removed(&matches);
    }
}

/// Whether a read failed because the file is not a whole entry (rather than unreadable).
fn is_damage(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
    )
}

/// Deletes `path`; one already gone is fine.
fn remove(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(file = %path.display(), error = %e, "cannot delete a cache file");
        }
    }
}

/// An entry's file: magic, header length, header, body, CRC-32 of all that.
fn encode(key: &str, e: &Entry) -> io::Result<Vec<u8>> {
    let meta = Meta {
        key: key.to_owned(),
        status: e.status,
        headers: e.headers.clone(),
        policy: e.policy.clone(),
        stored: e.stored,
        body_len: e.body.len() as u64,
    };
    let meta = serde_json::to_vec(&meta)?;
    let mut out = Vec::with_capacity(meta.len() + e.body.len() + FRAME as usize);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(
        &u32::try_from(meta.len())
            .map_err(io::Error::other)?
            .to_le_bytes(),
    );
    out.extend_from_slice(&meta);
    out.extend_from_slice(&e.body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// A read that hit the end of the file early: damage; any other error stays what it is.
fn truncated(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        damaged("truncated")
    } else {
        e
    }
}

fn damaged(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
}

/// Parses the header at the start of `bytes` (magic, length, JSON).
fn parse_meta(bytes: &[u8]) -> io::Result<(Meta, usize)> {
    if bytes.get(..8) != Some(MAGIC) {
        return Err(damaged("not a usher cache entry"));
    }
    let len = bytes
        .get(8..12)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| damaged("truncated"))?;
    if len > MAX_META {
        return Err(damaged("header too long"));
    }
    let json = bytes
        .get(12..12 + len)
        .ok_or_else(|| damaged("truncated"))?;
    let meta: Meta = serde_json::from_slice(json).map_err(|e| damaged(&e.to_string()))?;
    Ok((meta, 12 + len))
}

/// The header of the entry file at `path`, and the file's size, checked against the body
/// length the header gives (the CRC is checked when the entry is read).
fn read_meta(path: &Path) -> io::Result<(Meta, u64)> {
    let mut f = fs::File::open(path)?;
    let size = f.metadata()?.len();
    let mut head = [0u8; 12];
    f.read_exact(&mut head).map_err(truncated)?;
    let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if len > MAX_META {
        return Err(damaged("header too long"));
    }
    let mut bytes = head.to_vec();
    bytes.resize(12 + len, 0);
    f.read_exact(&mut bytes[12..]).map_err(truncated)?;
    let (meta, _) = parse_meta(&bytes)?;
    if FRAME
        .checked_add(len as u64)
        .and_then(|n| n.checked_add(meta.body_len))
        != Some(size)
    {
        return Err(damaged("size does not match its header"));
    }
    Ok((meta, size))
}

/// The whole entry stored at `path` for `key`, every check passed.
fn read_entry(path: &Path, key: &str) -> io::Result<Entry> {
    let bytes = fs::read(path)?;
    let (data, crc) = bytes
        .split_last_chunk::<4>()
        .ok_or_else(|| damaged("truncated"))?;
    if crc32fast::hash(data) != u32::from_le_bytes(*crc) {
        return Err(damaged("checksum mismatch"));
    }
    let (meta, start) = parse_meta(data)?;
    if meta.key != key {
        return Err(damaged("holds another key"));
    }
    let body_len = data
        .len()
        .checked_sub(start)
        .ok_or_else(|| damaged("truncated"))?;
    if body_len as u64 != meta.body_len {
        return Err(damaged("body length does not match its header"));
    }
    // the body is a view of the bytes read, not a second copy
    let body = Bytes::from(bytes).slice(start..start + body_len);
    Ok(Entry::new(
        meta.policy,
        meta.status,
        meta.headers,
        body,
        meta.stored,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &'static [u8]) -> Entry {
        let req = http::Request::get("http://a.test/x").body(()).unwrap();
        let resp = http::Response::builder()
            .header("cache-control", "max-age=60")
            .header("etag", "\"v1\"")
            .body(())
            .unwrap();
        Entry::new(
            CachePolicy::new(&req.into_parts().0, &resp.into_parts().0),
            StatusCode::OK,
            [(http::header::ETAG, "\"v1\"".parse().unwrap())]
                .into_iter()
                .collect(),
            Bytes::from_static(body),
            SystemTime::now(),
        )
    }

    #[test]
    fn an_entry_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.entry");
        fs::write(&path, encode("k", &entry(b"hello")).unwrap()).unwrap();
        let (meta, size) = read_meta(&path).unwrap();
        assert_eq!(
            (meta.key.as_str(), size),
            ("k", fs::metadata(&path).unwrap().len())
        );
        let back = read_entry(&path, "k").unwrap();
        assert_eq!(back.body, "hello");
        assert_eq!(back.headers.get("etag").unwrap(), "\"v1\"");
        assert!(back.policy.is_storable());
    }

    #[test]
    fn a_removal_flags_the_tickets_taken_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(dir.path(), 1 << 20).unwrap();
        let (k, other): (Arc<str>, Arc<str>) = ("http://a/x".into(), "http://a/y".into());
        let before = disk.ticket(&k);
        let unrelated = disk.ticket(&other);
        disk.remove_if(|key| key.ends_with("/x"));
        let after = disk.ticket(&k);
        assert!(before.removed());
        assert!(!unrelated.removed());
        assert!(!after.removed());
        for t in [before, unrelated, after] {
            disk.release(t);
        }
        assert!(disk.busy.lock().unwrap().is_empty());
    }

    #[test]
    fn of_two_writes_for_a_key_the_newer_response_stays() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(dir.path(), 1 << 20).unwrap();
        let k: Arc<str> = "k".into();
        let newer = entry(b"newer");
        let mut older = entry(b"older");
        older.stored = newer.stored - std::time::Duration::from_secs(5);
        // the newer one finishes first
        disk.write_now(&k, &newer).unwrap();
        disk.write_now(&k, &older).unwrap();
        let files: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1, "the older file is deleted");
        let file = disk.index.get(&k).unwrap();
        assert_eq!(read_entry(&file.path, "k").unwrap().body, "newer");
    }

    #[test]
    fn every_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.entry");
        let good = encode("k", &entry(b"hello")).unwrap();
        // a flipped bit anywhere, a truncation anywhere
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            fs::write(&path, &bad).unwrap();
            assert!(read_entry(&path, "k").is_err(), "flip at {i}");
            fs::write(&path, &good[..i]).unwrap();
            assert!(read_entry(&path, "k").is_err(), "cut at {i}");
            assert!(read_meta(&path).is_err(), "cut at {i}");
        }
        fs::write(&path, &good).unwrap();
        assert!(read_entry(&path, "other").is_err());
    }
}
