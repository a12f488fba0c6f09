//! The cache's disk tier: entries in one folder, bounded in bytes, kept across restarts.
//!
//! Each entry is one file, written under a temporary name and renamed into place, so a
//! reader (or a restart) finds a whole entry or none. A file holds the cache key, the
//! response head and its RFC 9111 policy (as JSON), then the body, then a CRC-32 of all
//! before it: a file that fails any check is deleted, never served. An index in memory
//! (key to file, rebuilt from the folder's headers at startup) orders entries by use and
//! deletes the files it evicts, which keeps the folder under its size.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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

/// The disk tier.
pub struct Disk {
    dir: PathBuf,
    index: moka::sync::Cache<Arc<str>, Arc<EntryFile>>,
    /// Makes file names unique within this run; `run` across runs.
    seq: AtomicU64,
    run: u128,
    /// Writes under way, which a drain lets finish.
    writes: tokio_util::task::TaskTracker,
    /// Counts removals, so a write that raced one can tell.
    removals: AtomicU64,
}

/// Where one entry is, and its size on disk.
#[derive(Debug)]
struct EntryFile {
    path: PathBuf,
    size: u64,
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
            removals: AtomicU64::new(0),
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
            if name.starts_with(".tmp") {
                remove(&path);
            } else if name.ends_with(SUFFIX) {
                match read_meta(&path) {
                    Ok((meta, size)) => found.push((meta.stored, meta.key, path, size)),
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "dropping a damaged cache entry");
                        remove(&path);
                    }
                }
            }
        }
        found.sort_by_key(|f| f.0);
        let count = found.len();
        for (_, key, path, size) in found {
            self.index
                .insert(key.into(), Arc::new(EntryFile { path, size }));
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
    /// none.
    pub async fn read(&self, key: &Arc<str>) -> Option<Entry> {
        let file = self.index.get(key)?;
        let (path, k) = (file.path.clone(), key.clone());
        let read = tokio::task::spawn_blocking(move || read_entry(&path, &k))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
        match read {
            Ok(entry) => Some(entry),
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(file = %file.path.display(), error = %e, "dropping a damaged cache entry");
                }
                // unless a newer file replaced it meanwhile
                self.remove_exactly(key, &file);
                None
            }
        }
    }

    /// Writes `entry` for `key` in the background (temporary file, then rename), replacing
    /// the file stored for it before. A purge or invalidation can come while the write is
    /// under way, too late to find its file: when one did, and `current` says the entry
    /// is no longer the one the memory tier holds for `key`, the write is undone.
    pub fn write(
        self: &Arc<Self>,
        key: Arc<str>,
        entry: Arc<Entry>,
        current: impl FnOnce() -> bool + Send + 'static,
    ) {
        let disk = self.clone();
        let removals = self.removals.load(Ordering::SeqCst);
        self.writes.spawn_blocking(move || {
            let written = disk.write_now(&key, &entry);
            if let Ok(file) = &written {
                if disk.removals.load(Ordering::SeqCst) != removals && !current() {
                    disk.remove_exactly(&key, file);
                }
            }
            if let Err(e) = written {
                tracing::warn!(folder = %disk.dir.display(), error = %e, "cannot write a cache entry to disk");
            }
        });
    }

    fn write_now(&self, key: &Arc<str>, entry: &Entry) -> io::Result<Arc<EntryFile>> {
        let bytes = encode(key, entry)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(&bytes)?;
        let mut tmp = tmp.into_temp_path();
        let path = loop {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let path = self.dir.join(format!("{:x}-{seq:x}{SUFFIX}", self.run));
            // never over another entry's file
            match tmp.persist_noclobber(&path) {
                Ok(()) => break path,
                Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => tmp = e.path,
                Err(e) => return Err(e.error),
            }
        };
        let file = Arc::new(EntryFile {
            path,
            size: bytes.len() as u64,
        });
        // the file it replaces is deleted by the eviction listener
        self.index.insert(key.clone(), file.clone());
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

    /// Drops the entry for exactly `key`.
    pub fn remove(&self, key: &str) {
        self.removals.fetch_add(1, Ordering::SeqCst);
        self.index.invalidate(key);
    }

    /// Drops every entry whose key `matches`, at once (files included).
    pub fn remove_if(&self, matches: impl Fn(&str) -> bool) {
        self.removals.fetch_add(1, Ordering::SeqCst);
        let doomed: Vec<Arc<Arc<str>>> = self
            .index
            .iter()
            .filter(|(k, _)| matches(k))
            .map(|(k, _)| k)
            .collect();
        for k in doomed {
            self.index.invalidate(k.as_ref());
        }
    }
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
    f.read_exact(&mut head).map_err(|_| damaged("truncated"))?;
    let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if len > MAX_META {
        return Err(damaged("header too long"));
    }
    let mut bytes = head.to_vec();
    bytes.resize(12 + len, 0);
    f.read_exact(&mut bytes[12..])
        .map_err(|_| damaged("truncated"))?;
    let (meta, _) = parse_meta(&bytes)?;
    if size != FRAME + len as u64 + meta.body_len {
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
    let body = data.get(start..).unwrap_or_default();
    if body.len() as u64 != meta.body_len {
        return Err(damaged("body length does not match its header"));
    }
    let body = Bytes::copy_from_slice(body);
    Ok(Entry {
        policy: meta.policy,
        status: meta.status,
        headers: meta.headers,
        body,
        stored: meta.stored,
    })
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
        Entry {
            policy: CachePolicy::new(&req.into_parts().0, &resp.into_parts().0),
            status: StatusCode::OK,
            headers: [(http::header::ETAG, "\"v1\"".parse().unwrap())]
                .into_iter()
                .collect(),
            body: Bytes::from_static(body),
            stored: SystemTime::now(),
        }
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
