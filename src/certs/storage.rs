//! The one interface behind which certificate state lives. Today a folder on disk; later a shared
//! store (Redis, etcd) so many usher instances share ACME accounts, certificates and locks.
//! Callers name things by key (`local-ca/root.crt`), never by path.

use std::fmt::Debug;
use std::future::Future;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;

/// A boxed future, so `Storage` can be a trait object.
pub type StorageFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'a>>;

/// Key-value storage for certificate material. Keys are relative, `/`-separated, and contain no
/// `..`. Every `store` is atomic: a reader sees the old value or the new one, never a mix.
pub trait Storage: Send + Sync + Debug {
    /// The value under `key`, or `None` if there is none.
    fn load<'a>(&'a self, key: &'a str) -> StorageFuture<'a, Option<Vec<u8>>>;
    /// Stores `value` under `key`; `secret` values (private keys) are readable by the owner only.
    fn store<'a>(&'a self, key: &'a str, value: &'a [u8], secret: bool) -> StorageFuture<'a, ()>;
    /// Moves a damaged value out of the way (kept for inspection, never silently overwritten)
    /// and returns where it went.
    fn set_aside<'a>(&'a self, key: &'a str) -> StorageFuture<'a, String>;
    /// Removes the value under `key`; removing what is not there is not an error.
    fn delete<'a>(&'a self, key: &'a str) -> StorageFuture<'a, ()>;
    /// A human-readable location of `key`, for error messages and the startup log.
    fn describe(&self, key: &str) -> String;
}

/// `Storage` on a local folder: temp file, fsync, rename, fsync the folder.
#[derive(Debug, Clone)]
pub struct FileStorage {
    root: PathBuf,
}

impl FileStorage {
    /// Uses `root` (created on first store). Fails early if it exists but is not writable, so
    /// a misconfigured `certs_dir` is a startup error rather than a surprise at renewal time.
    pub fn open(root: &Path) -> io::Result<FileStorage> {
        std::fs::create_dir_all(root)?;
        let probe = root.join(format!(".write-test-{}", std::process::id()));
        std::fs::write(&probe, b"")?;
        std::fs::remove_file(&probe)?;
        Ok(FileStorage {
            root: root.to_owned(),
        })
    }

    /// Uses `root` as it is, for reading (no folder is created, nothing is checked).
    pub fn at(root: &Path) -> FileStorage {
        FileStorage {
            root: root.to_owned(),
        }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        if key.is_empty()
            || key
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid storage key {key:?}"),
            ));
        }
        Ok(self.root.join(key))
    }
}

/// Writes `value` to `path` atomically; `secret` files get mode 0600 from creation on, so the
/// key is never readable by others even for an instant.
pub fn write_atomic(path: &Path, value: &[u8], secret: bool) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if secret { 0o600 } else { 0o644 })
            .open(&tmp)?;
        f.write_all(value)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl Storage for FileStorage {
    fn load<'a>(&'a self, key: &'a str) -> StorageFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            match tokio::fs::read(self.path(key)?).await {
                Ok(v) => Ok(Some(v)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn store<'a>(&'a self, key: &'a str, value: &'a [u8], secret: bool) -> StorageFuture<'a, ()> {
        Box::pin(async move {
            let path = self.path(key)?;
            let value = value.to_vec();
            tokio::task::spawn_blocking(move || write_atomic(&path, &value, secret))
                .await
                .map_err(io::Error::other)?
        })
    }

    fn set_aside<'a>(&'a self, key: &'a str) -> StorageFuture<'a, String> {
        Box::pin(async move {
            let path = self.path(key)?;
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut aside = path.clone().into_os_string();
            aside.push(format!(".corrupt-{secs}"));
            tokio::fs::rename(&path, &aside).await?;
            Ok(PathBuf::from(aside).display().to_string())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StorageFuture<'a, ()> {
        Box::pin(async move {
            match tokio::fs::remove_file(self.path(key)?).await {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
    }

    fn describe(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn store_is_atomic_and_secrets_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::open(dir.path()).unwrap();
        s.store("a/key.pem", b"secret", true).await.unwrap();
        s.store("a/cert.pem", b"public", false).await.unwrap();
        assert_eq!(s.load("a/key.pem").await.unwrap().unwrap(), b"secret");
        let mode = |k: &str| {
            std::fs::metadata(dir.path().join(k))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("a/key.pem"), 0o600);
        assert_eq!(mode("a/cert.pem"), 0o644);
        assert!(s.load("a/none").await.unwrap().is_none());
        // no temp files left behind
        let names: Vec<_> = std::fs::read_dir(dir.path().join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::open(dir.path()).unwrap();
        for key in ["../x", "a/../../x", "", "/abs", "a//b"] {
            assert!(s.load(key).await.is_err(), "{key}");
        }
    }

    #[tokio::test]
    async fn set_aside_keeps_the_old_value() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::open(dir.path()).unwrap();
        s.store("x.pem", b"junk", false).await.unwrap();
        let aside = s.set_aside("x.pem").await.unwrap();
        assert!(s.load("x.pem").await.unwrap().is_none());
        assert_eq!(std::fs::read(aside).unwrap(), b"junk");
    }
}
