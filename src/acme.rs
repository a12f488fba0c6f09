//! Automatic certificates from ACME CAs (instant-acme), as a plain loop per site, the way
//! Caddy's certmagic does it: load what is stored and serve it; sleep until renewal is due;
//! order (answering HTTP-01 on the plain listener or TLS-ALPN-01 on the TLS listener); store;
//! swap the new certificate into the resolver. A failure is logged with the CA's problem
//! document, retried with capped exponential back-off, and never touches the certificate
//! being served. When one issuer keeps failing for a site, the next one is tried.

mod challenges;
pub mod cli;
mod http;
pub mod stored;
pub mod timing;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    ExternalAccountKey, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::crypto::CryptoProvider;
use tokio_util::sync::CancellationToken;

pub use challenges::{Challenges, ACME_TLS_ALPN};

use crate::certs::Storage;
use crate::config::{Acme, ChallengeKind, Issuer};
use crate::error::StartupError;
use crate::tls::SiteCerts;
use stored::{Meta, Stored};

/// Consecutive failures with one issuer before the next one is tried.
const FAILURES_BEFORE_NEXT_ISSUER: u32 = 3;

/// Why one attempt to obtain a certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The CA answered with a problem document, or the exchange failed.
    #[error("{}", describe(.0))]
    Protocol(#[from] instant_acme::Error),
    /// The order did not reach the state it should have.
    #[error("{0}")]
    Order(String),
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(#[from] std::io::Error),
}

impl AcmeError {
    /// The CA says the account does not exist (RFC 8555 section 7.3.1).
    fn is_unknown_account(&self) -> bool {
        matches!(self, AcmeError::Protocol(instant_acme::Error::Api(p))
            if p.r#type.as_deref().is_some_and(|t| t.ends_with(":accountDoesNotExist")))
    }
}

/// The CA's problem document (type and detail) when there is one.
fn describe(e: &instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => format!(
            "CA problem {}: {}",
            p.r#type.as_deref().unwrap_or("(no type)"),
            p.detail.as_deref().unwrap_or("(no detail)")
        ),
        other => other.to_string(),
    }
}

/// One ACME-managed site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedSite {
    /// Its index among the config's sites.
    pub site: usize,
    /// Its names; the first keys its storage.
    pub names: Vec<String>,
}

/// Obtains and renews certificates for every ACME site.
pub struct AcmeManager {
    config: Acme,
    storage: Arc<dyn Storage>,
    challenges: Arc<Challenges>,
    /// Where new certificates go; a reload that keeps the manager points it at the new
    /// config's set.
    certs: arc_swap::ArcSwap<SiteCerts>,
    provider: Arc<CryptoProvider>,
    http: http::AcmeHttp,
    accounts: tokio::sync::Mutex<HashMap<String, Account>>,
    /// Failed certificate orders (for metrics).
    failures: std::sync::OnceLock<prometheus_client::metrics::counter::Counter>,
}

impl AcmeManager {
    /// A manager for `config`, storing in `storage` and installing into `certs`.
    pub fn new(
        config: Acme,
        storage: Arc<dyn Storage>,
        challenges: Arc<Challenges>,
        certs: Arc<SiteCerts>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<AcmeManager>, StartupError> {
        let http = http::AcmeHttp::new(&config.ca_roots).map_err(StartupError::Acme)?;
        Ok(Arc::new(AcmeManager {
            config,
            storage,
            challenges,
            certs: arc_swap::ArcSwap::new(certs),
            provider,
            http,
            accounts: tokio::sync::Mutex::new(HashMap::new()),
            failures: std::sync::OnceLock::new(),
        }))
    }

    /// Installs new certificates into `certs` from now on (a reload that kept the sites).
    pub fn retarget(&self, certs: Arc<SiteCerts>) {
        self.certs.store(certs);
    }

    /// Counts failed orders in `counter` from now on.
    pub fn count_failures_in(&self, counter: prometheus_client::metrics::counter::Counter) {
        let _ = self.failures.set(counter);
    }

    /// Installs every stored certificate that is still valid (so those sites serve from the
    /// first second), then starts one background loop per site.
    /// The loops run on `tasks`, so a shutdown can wait for a certificate being saved.
    pub async fn start(
        self: &Arc<Self>,
        sites: Vec<ManagedSite>,
        shutdown: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) {
        for site in sites {
            let mut current =
                stored::load(self.storage.as_ref(), &site.names[0], &self.provider).await;
            if let Some(s) = &current {
                let now = SystemTime::now();
                if stored::time(s.meta.not_after) <= now {
                    tracing::warn!(site = %site.names[0], "stored certificate has expired; ordering a new one");
                    current = None;
                } else {
                    self.certs.load().set(site.site, s.certified.clone());
                    tracing::info!(site = %site.names[0], not_after = %humantime::format_rfc3339(stored::time(s.meta.not_after)), "using the stored certificate");
                }
            }
            // a failing site resumes its backoff (after a restart or a reload that made a
            // new manager) instead of ordering again at once
            let resume = stored::load_state(self.storage.as_ref(), &site.names[0])
                .await
                .unwrap_or_default();
            tasks.spawn(
                self.clone()
                    .site_loop(site, current, resume, shutdown.clone()),
            );
        }
    }

    async fn site_loop(
        self: Arc<Self>,
        site: ManagedSite,
        mut current: Option<Stored>,
        resume: stored::State,
        shutdown: CancellationToken,
    ) {
        let primary = site.names[0].clone();
        let mut wanted = site.names.clone();
        wanted.sort();
        let (mut retry_wait, mut floor) = (Duration::ZERO, Duration::ZERO);
        let (mut failures, mut issuer) = (resume.failures, 0usize);
        if failures > 0 {
            retry_wait = resume
                .next_attempt
                .and_then(|t| stored::time(t).duration_since(SystemTime::now()).ok())
                .unwrap_or_default();
        }
        loop {
            // What to wait for: a retry, a renewal, or (with ARI) a fresh look at the CA's window.
            let mut replaces = None;
            let (wait, renew) = match &current {
                _ if failures > 0 => (retry_wait, true),
                Some(s) if s.meta.names != wanted => (Duration::ZERO, true),
                Some(s) => {
                    let now = SystemTime::now();
                    let mut at = stored::time(s.meta.renew_at);
                    let mut recheck = None;
                    if let Some((ari_at, retry_after, id)) = self.ari(s).await {
                        at = ari_at;
                        recheck = Some(retry_after);
                        replaces = Some(id);
                    }
                    let until = at
                        .duration_since(now)
                        .unwrap_or_default()
                        .max(std::mem::take(&mut floor));
                    match recheck {
                        Some(r) if r < until => (r, false),
                        _ => (until, true),
                    }
                }
                None => (Duration::ZERO, true),
            };
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            if !renew {
                continue;
            }
            let issuer_cfg = &self.config.issuers[issuer];
            // An ARI renewal tells the CA which certificate it replaces (RFC 9773 section 5):
            // Let's Encrypt exempts such orders from rate limits. Only to the CA that issued it.
            let replaces = replaces.filter(|_| {
                current
                    .as_ref()
                    .is_some_and(|c| c.meta.issuer == issuer_cfg.directory)
            });
            let attempt = tokio::select! {
                r = self.obtain(issuer_cfg, &site.names, replaces) => r,
                _ = shutdown.cancelled() => return,
            };
            match attempt.and_then(|(chain, key)| self.accept(issuer_cfg, &wanted, chain, key)) {
                Ok((stored, chain, key)) => {
                    if let Err(e) =
                        stored::save(self.storage.as_ref(), &primary, &chain, &key, &stored.meta)
                            .await
                    {
                        tracing::error!(site = %primary, error = %e, "cannot store the new certificate; serving it from memory");
                    }
                    self.certs.load().set(site.site, stored.certified.clone());
                    tracing::info!(
                        site = %primary,
                        issuer = %issuer_cfg.directory,
                        not_after = %humantime::format_rfc3339(stored::time(stored.meta.not_after)),
                        renew_at = %humantime::format_rfc3339(stored::time(stored.meta.renew_at)),
                        "certificate obtained"
                    );
                    let state = stored::State {
                        next_attempt: Some(stored.meta.renew_at),
                        ..Default::default()
                    };
                    stored::save_state(self.storage.as_ref(), &primary, &state).await;
                    current = Some(stored);
                    failures = 0;
                    // Never order again straight away, whatever a clock or an ARI window says.
                    floor = self.config.retry_initial;
                }
                Err(e) => {
                    failures += 1;
                    if let Some(c) = self.failures.get() {
                        c.inc();
                    }
                    if e.is_unknown_account() {
                        self.forget_account(issuer_cfg).await;
                    }
                    let next = timing::backoff(
                        failures,
                        self.config.retry_initial,
                        self.config.retry_max,
                        self.http.retry_after_for(&issuer_cfg.directory),
                    );
                    retry_wait = next;
                    tracing::error!(
                        site = %primary,
                        issuer = %issuer_cfg.directory,
                        attempt = failures,
                        next_attempt_in = ?next,
                        serving = if current.is_some() { "the previous certificate" } else { "nothing yet" },
                        "certificate order failed: {e}"
                    );
                    let state = stored::State {
                        failures,
                        last_error: Some(e.to_string()),
                        next_attempt: Some(stored::secs(SystemTime::now() + next)),
                    };
                    stored::save_state(self.storage.as_ref(), &primary, &state).await;
                    if failures % FAILURES_BEFORE_NEXT_ISSUER == 0 && self.config.issuers.len() > 1
                    {
                        issuer = (issuer + 1) % self.config.issuers.len();
                        tracing::warn!(site = %primary, issuer = %self.config.issuers[issuer].directory, "switching to the next issuer");
                    }
                }
            }
        }
    }

    /// The CA's ACME Renewal Information for a stored certificate, when its issuer offers it:
    /// when to renew (a random point of the suggested window), when to look again (the CA's
    /// Retry-After, clamped to 1 min..24 h), and the certificate's identifier for `replaces`.
    async fn ari(
        &self,
        s: &Stored,
    ) -> Option<(SystemTime, Duration, CertificateIdentifier<'static>)> {
        let issuer = self
            .config
            .issuers
            .iter()
            .find(|i| i.directory == s.meta.issuer)?;
        let id = stored::certificate_id(s.certified.cert.first()?)?;
        let account = self.account(issuer).await.ok()?;
        match account.renewal_info(&id).await {
            Ok((info, retry_after)) => {
                let w = info.suggested_window;
                let at = timing::ari_pick(
                    w.start.into(),
                    w.end.into(),
                    SystemTime::now(),
                    timing::random_unit(),
                );
                let recheck =
                    retry_after.clamp(Duration::from_secs(60), Duration::from_secs(24 * 3600));
                tracing::debug!(site = %s.meta.names[0], renew_at = %humantime::format_rfc3339(at), "ARI renewal window");
                Some((at, recheck, id))
            }
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(e) => {
                tracing::warn!(site = %s.meta.names[0], "ARI lookup failed, using the lifetime rule: {}", describe(&e));
                None
            }
        }
    }

    /// Checks a fresh certificate and works out when to renew it.
    fn accept(
        &self,
        issuer: &Issuer,
        names: &[String],
        chain: String,
        key: String,
    ) -> Result<(Stored, String, String), AcmeError> {
        let (not_before, not_after) = stored::validity(&chain).map_err(AcmeError::Order)?;
        let certified =
            stored::certified(&chain, &key, &self.provider).map_err(AcmeError::Order)?;
        let renew = timing::renew_at(not_before, not_after, timing::random_unit());
        let meta = Meta {
            issuer: issuer.directory.clone(),
            names: names.to_vec(),
            not_before: stored::secs(not_before),
            not_after: stored::secs(not_after),
            renew_at: stored::secs(renew),
        };
        Ok((Stored { certified, meta }, chain, key))
    }

    /// The account at `issuer`: stored credentials, or a new account (then stored, 0600).
    async fn account(&self, issuer: &Issuer) -> Result<Account, AcmeError> {
        let mut accounts = self.accounts.lock().await;
        if let Some(a) = accounts.get(&issuer.directory) {
            return Ok(a.clone());
        }
        let key = stored::account_key(&issuer.directory);
        let builder = || Account::builder_with_http(Box::new(self.http.clone()));
        let creds = match self.storage.load(&key).await? {
            Some(bytes) => match serde_json::from_slice::<AccountCredentials>(&bytes) {
                Ok(c) => Some(c),
                Err(e) => {
                    self.set_aside_account(&key, &format!("not account credentials: {e}"))
                        .await;
                    None
                }
            },
            None => None,
        };
        let account = match creds {
            Some(creds) => builder().from_credentials(creds).await?,
            None => {
                let contact = self.config.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let eab = issuer
                    .eab
                    .as_ref()
                    .map(|e| ExternalAccountKey::new(e.kid.clone(), &e.hmac_key));
                let new = NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, creds) = builder()
                    .create(&new, issuer.directory.clone(), eab.as_ref())
                    .await?;
                let bytes =
                    serde_json::to_vec(&creds).map_err(|e| AcmeError::Order(e.to_string()))?;
                self.storage.store(&key, &bytes, true).await?;
                tracing::info!(issuer = %issuer.directory, path = %self.storage.describe(&key), "created an ACME account");
                account
            }
        };
        accounts.insert(issuer.directory.clone(), account.clone());
        Ok(account)
    }

    /// Moves an account file out of the way (kept, renamed) so a new account is created.
    async fn set_aside_account(&self, key: &str, reason: &str) {
        match self.storage.set_aside(key).await {
            Ok(to) => {
                tracing::error!(path = %self.storage.describe(key), set_aside = %to, %reason, "ACME account set aside; a new one will be created")
            }
            Err(e) => {
                tracing::error!(path = %self.storage.describe(key), error = %e, %reason, "ACME account unusable and could not be set aside")
            }
        }
    }

    /// After the CA said the account does not exist (its database was reset, or it was
    /// deactivated): forget it, so the next attempt creates a new one.
    async fn forget_account(&self, issuer: &Issuer) {
        self.accounts.lock().await.remove(&issuer.directory);
        self.set_aside_account(
            &stored::account_key(&issuer.directory),
            "the CA no longer knows it",
        )
        .await;
    }

    /// One order: returns the chain and private key (PEM).
    async fn obtain(
        &self,
        issuer: &Issuer,
        names: &[String],
        replaces: Option<CertificateIdentifier<'static>>,
    ) -> Result<(String, String), AcmeError> {
        let account = self.account(issuer).await?;
        let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let mut new_order = NewOrder::new(&ids);
        if let Some(id) = replaces {
            new_order = new_order.replaces(id);
        }
        if let Some(p) = &issuer.profile {
            new_order = new_order.profile(p);
        }
        let mut order = account.new_order(&new_order).await?;
        let (mut tokens, mut tls_names) = (Vec::new(), Vec::new());
        let result = async {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz?;
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    // reused from an earlier order
                    AuthorizationStatus::Valid => continue,
                    other => return Err(AcmeError::Order(format!("authorization is {other:?}"))),
                }
                let offered: Vec<ChallengeType> = authz.challenges.iter().map(|c| c.r#type.clone()).collect();
                let kind = self
                    .config
                    .challenges
                    .iter()
                    .copied()
                    .find(|k| offered.contains(&challenge_type(*k)))
                    .ok_or_else(|| AcmeError::Order(format!("the CA offers none of the configured challenges (it offers {offered:?})")))?;
                let mut challenge = authz
                    .challenge(challenge_type(kind))
                    .ok_or_else(|| AcmeError::Order("challenge vanished".into()))?;
                let key_auth = challenge.key_authorization();
                match kind {
                    ChallengeKind::Http01 => {
                        self.challenges.add_http(challenge.token.clone(), key_auth.as_str().to_owned());
                        tokens.push(challenge.token.clone());
                    }
                    ChallengeKind::TlsAlpn01 => {
                        let name = challenge.identifier().to_string();
                        self.challenges
                            .add_tls(&name, key_auth.digest().as_ref(), &self.provider)
                            .map_err(AcmeError::Order)?;
                        tls_names.push(name);
                    }
                }
                challenge.set_ready().await?;
            }
            let status = order.poll_ready(&RetryPolicy::new()).await?;
            if status != OrderStatus::Ready {
                return Err(AcmeError::Order(format!(
                    "order is {status:?}: {}",
                    order_problems(&mut order).await
                )));
            }
            let key = rcgen::KeyPair::generate().map_err(|e| AcmeError::Order(e.to_string()))?;
            let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| AcmeError::Order(e.to_string()))?;
            params.distinguished_name = rcgen::DistinguishedName::new();
            let csr = params
                .serialize_request(&key)
                .map_err(|e| AcmeError::Order(e.to_string()))?;
            order.finalize_csr(csr.der()).await?;
            let chain = order.poll_certificate(&RetryPolicy::new()).await?;
            Ok((chain, key.serialize_pem()))
        }
        .await;
        self.challenges.remove(&tokens, &tls_names);
        result
    }
}

/// The CA's reasons for an order that failed: each challenge's error.
async fn order_problems(order: &mut instant_acme::Order) -> String {
    let mut out = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        if let Ok(state) = authz.refresh().await {
            for c in &state.challenges {
                if let Some(p) = &c.error {
                    out.push(format!(
                        "{:?} {}: {}",
                        c.r#type,
                        p.r#type.as_deref().unwrap_or("(no type)"),
                        p.detail.as_deref().unwrap_or("(no detail)")
                    ));
                }
            }
        }
    }
    if out.is_empty() {
        "the CA gave no reason".into()
    } else {
        out.join("; ")
    }
}

fn challenge_type(kind: ChallengeKind) -> ChallengeType {
    match kind {
        ChallengeKind::Http01 => ChallengeType::Http01,
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
    }
}
