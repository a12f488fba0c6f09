//! Dropping root: with `[server] user`, a usher started as root (to bind ports 80 and 443
//! without CAP_NET_BIND_SERVICE) becomes that user once its listeners are bound and its
//! certificates loaded, as nginx's workers do. Without root there is nothing to drop.

use std::io;
use std::path::Path;

use nix::unistd::{self, Gid, Uid};

use crate::config::RunAs;

/// Becomes `user` (its group only, no supplementary groups) if running as root, after
/// giving it the folders in `owned` (certificates and cache written so far as root, which
/// the user must read and rewrite). Says what it did; an error leaves the process as it
/// was, and the caller stops.
pub fn drop_to(user: &RunAs, owned: &[&Path]) -> Result<String, String> {
    if !unistd::geteuid().is_root() {
        return Ok(format!(
            "server.user = {:?} ignored: not started as root (running as uid {})",
            user.name,
            unistd::geteuid()
        ));
    }
    for dir in owned {
        give(dir, user.uid, user.gid).map_err(|e| format!("chown {}: {e}", dir.display()))?;
    }
    let (uid, gid) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
    unistd::setgroups(&[gid]).map_err(|e| format!("setgroups: {e}"))?;
    unistd::setgid(gid).map_err(|e| format!("setgid {gid}: {e}"))?;
    unistd::setuid(uid).map_err(|e| format!("setuid {uid}: {e}"))?;
    // and for good: root cannot be regained
    if unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err("still able to become root after setuid".into());
    }
    Ok(format!(
        "running as {} (uid {uid}, gid {gid}) from now on",
        user.name
    ))
}

/// Makes `path` and everything under it owned by `uid`:`gid`, never following a symlink.
/// A path that does not exist is fine.
fn give(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            give(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}
