//! One config's worth of running server, built at startup and again at every reload.
//!
//! A reload builds the new generation beside the running one: new listen addresses are
//! bound, certificates loaded or issued, routes compiled, the ACME client made. Anything
//! failing there leaves the running generation untouched, and the error is returned (and
//! logged by the caller). Only then is it committed, in steps that cannot fail: the
//! certificates and the request path are swapped in, pools that are gone are retired, the
//! background loops of the old generation stop and the new one's start, and listeners that
//! are no longer wanted close. Listeners, pools (health, connections, load), the cache and
//! the buffers whose settings did not change carry over; requests in flight and open
//! tunnels finish on what they started with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{accept_loop, bind, install_certs, renew_internal, ConnSettings, Live, Shared};
use crate::access_log::AccessLog;
use crate::acme::{AcmeManager, Challenges, ManagedSite};
use crate::certs::{FileStorage, LocalCa, Storage};
use crate::config::{Config, TlsMode};
use crate::error::{ReloadError, StartupError};
use crate::proxy::Proxy;
use crate::routing::Routes;
use crate::tls::{self, CertResolver, SiteCerts};

/// Which listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    Https,
    Admin,
}

/// A listener of the running generation.
struct Listening {
    kind: Kind,
    /// The address in the config (port 0 stays 0 here).
    wanted: SocketAddr,
    /// The address bound.
    bound: SocketAddr,
    /// Stops its accept loop.
    stop: CancellationToken,
}

/// The running generation's parts that a reload replaces or compares with (its config and
/// certificates are `Core::config` and `Core::certs`).
struct State {
    /// Its internal-certificate loop.
    background: CancellationToken,
    /// The ACME manager and its loops, kept by a reload that changes neither `[acme]` nor
    /// the ACME sites (orders under way go on).
    acme: Option<RunningAcme>,
    listeners: Vec<Listening>,
    /// Where the local CA certificate is, when a site uses it.
    local_ca: Option<String>,
}

/// A running ACME manager and what it was started for.
#[derive(Clone)]
struct RunningAcme {
    manager: Arc<AcmeManager>,
    sites: Vec<ManagedSite>,
    settings: crate::config::Acme,
    certs_dir: PathBuf,
    stop: CancellationToken,
}

/// What a new generation does about ACME.
enum AcmePlan {
    None,
    Keep(RunningAcme),
    Start(Arc<AcmeManager>, Vec<ManagedSite>),
}

/// What the admin API and the handle report about the running config.
#[derive(Debug, Clone)]
pub struct Status {
    /// The config file.
    pub file: PathBuf,
    /// 1 for the config usher started with, +1 for each reload that took.
    pub generation: u64,
    /// When the running config was loaded.
    pub loaded: SystemTime,
    /// `Config::summary` of the running config.
    pub summary: String,
    /// Bound addresses.
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// Where the local CA certificate is, when a site uses `tls = "internal"`.
    pub local_ca: Option<String>,
    /// The last reload that failed, if the last reload failed: when, and every error.
    pub failed: Option<(SystemTime, String)>,
}

/// The server's long-lived core: what outlives every generation, and the current one.
pub struct Core {
    pub(super) shared: Arc<Shared>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    challenges: Arc<Challenges>,
    resolver: Arc<CertResolver>,
    log: Option<AccessLog>,
    /// Client connections.
    pub(super) tracker: TaskTracker,
    /// Accept loops.
    pub(super) accepting: TaskTracker,
    pub(super) acme_tasks: TaskTracker,
    pub(super) shutdown: CancellationToken,
    /// One reload at a time; `None` until the first config is in.
    state: tokio::sync::Mutex<Option<State>>,
    status: ArcSwap<Option<Status>>,
    /// The running generation's certificates (for metrics and the admin API).
    pub(super) certs: arc_swap::ArcSwapOption<SiteCerts>,
    /// The running config.
    pub(super) config: arc_swap::ArcSwapOption<Config>,
}

/// A new generation, built and checked, not yet running.
struct Prepared {
    config: Arc<Config>,
    site_certs: Arc<SiteCerts>,
    local_ca: Option<Arc<LocalCa>>,
    live: Live,
    acme: AcmePlan,
    kept: Vec<Listening>,
    fresh: Vec<(Kind, SocketAddr, TcpListener)>,
}

impl Core {
    pub(super) fn new(log: Option<AccessLog>, shared: Arc<Shared>) -> Arc<Core> {
        let challenges = Arc::new(Challenges::default());
        Arc::new(Core {
            // (a child: cancelling it cannot fire the drain behind `Stop::fire`'s back)
            shutdown: shared.drain.token.child_token(),
            shared,
            provider: tls::provider(),
            resolver: Arc::new(CertResolver::new(challenges.clone())),
            challenges,
            log,
            tracker: TaskTracker::new(),
            accepting: TaskTracker::new(),
            acme_tasks: TaskTracker::new(),
            state: tokio::sync::Mutex::new(None),
            status: ArcSwap::from_pointee(None),
            certs: arc_swap::ArcSwapOption::empty(),
            config: arc_swap::ArcSwapOption::empty(),
        })
    }

    /// The running config's status (`None` before the first config is in).
    pub fn status(&self) -> Arc<Option<Status>> {
        self.status.load_full()
    }

    /// Builds `config` and swaps it in, or leaves everything as it was and says why.
    pub async fn apply(self: &Arc<Self>, config: Config) -> Result<(), StartupError> {
        let mut state = self.state.lock().await;
        self.apply_locked(&mut state, config).await
    }

    /// Reads the running config's file again and applies it: the whole of it under the
    /// lock (two reloads at once apply the file in the order they read it, and report in
    /// that order), on a task of its own (a caller that goes away cannot cut it off
    /// halfway). A failure is recorded in the status and the running config stays.
    pub async fn reload(self: &Arc<Self>) -> Result<(), ReloadError> {
        let core = self.clone();
        tokio::spawn(async move {
            let mut state = core.state.lock().await;
            if core.shutdown.is_cancelled() {
                return Err(ReloadError::Draining);
            }
            let Some(file) = core.config.load_full().map(|c| c.file.clone()) else {
                return Err(ReloadError::NotStarted);
            };
            let result = match Config::load(&file) {
                Ok(config) => core
                    .apply_locked(&mut state, config)
                    .await
                    .map_err(ReloadError::Apply),
                Err(e) => Err(ReloadError::Config(e)),
            };
            if let Err(e) = &result {
                let mut status = (*core.status()).clone();
                if let Some(s) = status.as_mut() {
                    s.failed = Some((SystemTime::now(), e.to_string()));
                }
                core.status.store(Arc::new(status));
            }
            result
        })
        .await
        .unwrap_or(Err(ReloadError::Draining))
    }

    async fn apply_locked(
        self: &Arc<Self>,
        state: &mut Option<State>,
        config: Config,
    ) -> Result<(), StartupError> {
        let config = Arc::new(config);
        let prepared = self.prepare(config.clone(), state.as_ref()).await?;
        let next = self.commit(prepared, state.take()).await;
        let generation = self.status().as_ref().as_ref().map_or(0, |s| s.generation) + 1;
        let addr = |k: Kind| next.listeners.iter().find(|l| l.kind == k).map(|l| l.bound);
        self.status.store(Arc::new(Some(Status {
            file: config.file.clone(),
            generation,
            loaded: SystemTime::now(),
            summary: config.summary(),
            http: addr(Kind::Http),
            https: addr(Kind::Https),
            admin: addr(Kind::Admin),
            local_ca: next.local_ca.clone(),
            failed: None,
        })));
        *state = Some(next);
        Ok(())
    }

    async fn prepare(
        &self,
        config: Arc<Config>,
        prev: Option<&State>,
    ) -> Result<Prepared, StartupError> {
        if let Some(p) = self.config.load_full() {
            if p.user != config.user {
                tracing::warn!("server.user changes take effect at the next start");
            }
            if p.access_log != config.access_log {
                tracing::warn!("server.access_log changes take effect at the next start");
            }
        }
        // Listeners first: a taken port is the likeliest failure, and the cheapest to undo.
        let mut kept = Vec::new();
        let mut fresh = Vec::new();
        for (kind, addr) in wanted_listeners(&config) {
            let same = prev.and_then(|p| {
                p.listeners
                    .iter()
                    .find(|l| l.kind == kind && l.wanted == addr)
            });
            match same {
                Some(l) => kept.push(Listening {
                    kind,
                    wanted: addr,
                    bound: l.bound,
                    stop: l.stop.clone(),
                }),
                None => fresh.push((kind, addr, bind(addr)?)),
            }
        }
        let bound = |k: Kind| {
            kept.iter()
                .find(|l| l.kind == k)
                .map(|l| l.bound)
                .or_else(|| {
                    fresh
                        .iter()
                        .find(|f| f.0 == k)
                        .and_then(|f| f.2.local_addr().ok())
                })
        };
        let https_port = bound(Kind::Https).map(|a| a.port());

        // Certificates: issued or read into a new set, not yet served.
        let needs_storage = |m: &TlsMode| matches!(m, TlsMode::Internal | TlsMode::Acme);
        let storage: Option<Arc<dyn Storage>> =
            if config.sites.iter().any(|s| needs_storage(&s.tls)) {
                let s = FileStorage::open(&config.certs_dir).map_err(|source| {
                    StartupError::Storage {
                        path: config.certs_dir.clone(),
                        source,
                    }
                })?;
                Some(Arc::new(s))
            } else {
                None
            };
        let local_ca = match (
            &storage,
            config.sites.iter().any(|s| s.tls == TlsMode::Internal),
        ) {
            (Some(storage), true) => {
                Some(Arc::new(LocalCa::load_or_create(storage.as_ref()).await?))
            }
            _ => None,
        };
        let site_certs = Arc::new(SiteCerts::new(&config, self.resolver.clone()));
        if let Some(old) = self.certs.load_full() {
            // ACME certificates of sites that stay keep serving until their loop reloads them
            site_certs.carry_over(&old);
        }
        install_certs(
            &config,
            local_ca.as_deref(),
            &self.provider,
            &site_certs,
            false,
        )?;
        let acme_sites: Vec<ManagedSite> = config
            .sites
            .iter()
            .enumerate()
            .filter(|(_, s)| s.tls == TlsMode::Acme)
            .map(|(site, s)| ManagedSite {
                site,
                names: s.names.clone(),
            })
            .collect();
        let same = prev.and_then(|p| p.acme.as_ref()).filter(|a| {
            a.sites == acme_sites && a.settings == config.acme && a.certs_dir == config.certs_dir
        });
        let acme = match (same, storage) {
            _ if acme_sites.is_empty() => AcmePlan::None,
            (Some(a), _) => AcmePlan::Keep(a.clone()),
            (None, Some(storage)) => AcmePlan::Start(
                AcmeManager::new(
                    config.acme.clone(),
                    storage,
                    self.challenges.clone(),
                    site_certs.clone(),
                    self.provider.clone(),
                )?,
                acme_sites,
            ),
            (None, None) => AcmePlan::None,
        };

        // The request path.
        let prev_live = prev.map(|_| self.shared.live.load_full());
        let previous = prev_live.as_ref().map(|l| l.proxy.routes());
        let routes =
            Routes::rebuild(&config, previous, &self.shared.metrics).map_err(|source| {
                StartupError::Storage {
                    path: config.file.clone(),
                    source,
                }
            })?;
        let proxy = Proxy::new(
            routes,
            https_port,
            self.log.clone(),
            self.challenges.clone(),
            &config,
            prev_live.as_ref().map(|l| &l.proxy),
        )?;
        let tls = match (
            bound(Kind::Https),
            prev_live.as_ref().and_then(|l| l.conn.tls.clone()),
        ) {
            (None, _) => None,
            // the same TLS config keeps session tickets and resumption across reloads
            (Some(_), Some(tls)) => Some(tls),
            (Some(_), None) => Some(TlsAcceptor::from(tls::server_config(
                self.resolver.clone(),
                self.provider.clone(),
            )?)),
        };
        let live = Live {
            proxy,
            conn: ConnSettings::new(&config, tls),
        };
        Ok(Prepared {
            config,
            site_certs,
            local_ca,
            live,
            acme,
            kept,
            fresh,
        })
    }

    /// Puts `next` in the place of `prev`; nothing here fails.
    async fn commit(self: &Arc<Self>, next: Prepared, prev: Option<State>) -> State {
        let config = next.config;
        // A kept ACME manager installs into the new set from now on; what it installed into
        // the old one meanwhile is carried over again.
        if let AcmePlan::Keep(a) = &next.acme {
            a.manager.retarget(next.site_certs.clone());
            if let Some(old) = self.certs.load_full() {
                next.site_certs.carry_over(&old);
            }
        }
        // Listeners no longer wanted close before the swap (a removed https listener must
        // not take a connection the new config would serve without TLS).
        if let Some(p) = &prev {
            for l in &p.listeners {
                if !next
                    .kept
                    .iter()
                    .any(|k| k.kind == l.kind && k.wanted == l.wanted)
                {
                    tracing::info!(addr = %l.bound, "listener closed");
                    l.stop.cancel();
                }
            }
        }
        next.site_certs.activate();
        self.certs.store(Some(next.site_certs.clone()));
        self.config.store(Some(config.clone()));
        let caps = &self.shared.caps;
        caps.total
            .store(config.limits.max_connections, Ordering::Relaxed);
        caps.per_ip
            .store(config.limits.max_connections_per_ip, Ordering::Relaxed);
        let new_pools = next.live.proxy.routes().pools().to_vec();
        let old = self.shared.live.swap(Arc::new(next.live));
        let old_pools: &[Arc<crate::upstream::Pool>] = match &prev {
            Some(_) => old.proxy.routes().pools(),
            None => &[],
        };
        for p in old_pools {
            if !new_pools.iter().any(|n| Arc::ptr_eq(n, p)) {
                p.retire();
            }
        }
        for p in &new_pools {
            if !old_pools.iter().any(|o| Arc::ptr_eq(o, p)) {
                tokio::spawn(p.clone().check_health(self.shutdown.clone()));
                tokio::spawn(p.clone().sweep_idle(self.shutdown.clone()));
            }
        }
        drop(old);

        // Background loops: the old generation's stop, this one's start.
        if let Some(p) = &prev {
            p.background.cancel();
        }
        let background = self.shutdown.child_token();
        let old_acme = prev.as_ref().and_then(|p| p.acme.clone());
        let acme = match next.acme {
            AcmePlan::Keep(a) => Some(a),
            plan => {
                if let Some(old) = old_acme {
                    old.stop.cancel();
                }
                match plan {
                    AcmePlan::Start(manager, sites) => {
                        let stop = self.shutdown.child_token();
                        manager.count_failures_in(self.shared.metrics.cert_failures.clone());
                        manager
                            .start(sites.clone(), stop.clone(), &self.acme_tasks)
                            .await;
                        Some(RunningAcme {
                            manager,
                            sites,
                            settings: config.acme.clone(),
                            certs_dir: config.certs_dir.clone(),
                            stop,
                        })
                    }
                    _ => None,
                }
            }
        };
        let local_ca = next
            .local_ca
            .as_ref()
            .map(|ca| ca.cert_location().to_owned());
        if let Some(ca) = next.local_ca {
            tokio::spawn(renew_internal(
                (*config).clone(),
                ca,
                self.provider.clone(),
                next.site_certs.clone(),
                background.clone(),
            ));
        }

        // Listeners: open the new ones (those no longer wanted closed first, above).
        let mut listeners = next.kept;
        for (kind, wanted, listener) in next.fresh {
            let bound = listener.local_addr().unwrap_or(wanted);
            let stop = self.shutdown.child_token();
            match kind {
                Kind::Admin => {
                    let control = super::Control(self.clone());
                    self.accepting
                        .spawn(crate::admin::serve(listener, control, stop.clone()));
                    tracing::info!(addr = %bound, "admin listener on");
                }
                Kind::Http | Kind::Https => {
                    self.accepting.spawn(accept_loop(
                        listener,
                        kind == Kind::Https,
                        self.shared.clone(),
                        self.tracker.clone(),
                        stop.clone(),
                    ));
                    if prev.is_some() {
                        tracing::info!(addr = %bound, "listener opened");
                    }
                }
            }
            listeners.push(Listening {
                kind,
                wanted,
                bound,
                stop,
            });
        }
        State {
            background,
            acme,
            listeners,
            local_ca,
        }
    }
}

/// The listeners `config` asks for: https only when a site uses TLS.
fn wanted_listeners(config: &Config) -> Vec<(Kind, SocketAddr)> {
    let tls = config.sites.iter().any(|s| s.tls != TlsMode::Off);
    [
        (Kind::Http, config.http),
        (Kind::Https, config.https.filter(|_| tls)),
        (Kind::Admin, config.admin),
    ]
    .into_iter()
    .filter_map(|(k, a)| Some((k, a?)))
    .collect()
}
