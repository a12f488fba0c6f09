//! Dropping root: with `[server] user`, a usher started as root (to bind ports 80 and 443
//! without CAP_NET_BIND_SERVICE) becomes that user once its listeners are bound and its
//! certificates loaded, as nginx's workers do. Without root there is nothing to drop.

use nix::unistd::{self, Gid, Uid};

use crate::config::RunAs;

/// Becomes `user` (its group only, no supplementary groups) if running as root. Says what
/// it did; an error leaves the process as it was, and the caller stops.
pub fn drop_to(user: &RunAs) -> Result<String, String> {
    if !unistd::geteuid().is_root() {
        return Ok(format!(
            "server.user = {:?} ignored: not started as root (running as uid {})",
            user.name,
            unistd::geteuid()
        ));
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
