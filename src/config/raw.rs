//! The raw serde mirror of proxy.toml. Every table denies unknown keys so a typo is an error,
//! and every value that is validated later keeps its span so the error can name its line.

use serde::Deserialize;
use toml::Spanned;

type S<T> = Option<Spanned<T>>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub buffering: RawBuffering,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub acme: RawAcme,
    #[serde(default, rename = "site")]
    pub sites: Vec<Spanned<RawSite>>,
    #[serde(default, rename = "upstream")]
    pub upstreams: std::collections::BTreeMap<String, Spanned<RawUpstream>>,
}

/// A route's `proxy`: a pool name, or an inline list of addresses.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawProxy {
    Pool(String),
    List(Vec<String>),
}

/// `[upstream.NAME]`: a named pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub members: S<Vec<Spanned<RawMember>>>,
    pub balance: S<String>,
    pub hash_header: S<String>,
    pub hash_cookie: S<String>,
    pub retries: S<i64>,
    pub eject_after: S<i64>,
    pub eject_for: S<String>,
    pub max_ejected_percent: S<i64>,
    pub protocol: S<String>,
    pub max_conns: S<i64>,
    pub idle_timeout: S<String>,
    pub queue: S<i64>,
    pub queue_timeout: S<String>,
    pub health: S<RawHealth>,
}

/// `[upstream.NAME.health]`: active health checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: S<String>,
    pub interval: S<String>,
    pub timeout: S<String>,
    pub status: S<String>,
    pub healthy_after: S<i64>,
    pub unhealthy_after: S<i64>,
}

/// A pool member: `"host:port"` or `{ addr = "host:port", weight = 2 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawMember {
    Addr(String),
    Weighted(RawWeighted),
}

/// The table form of a member.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeighted {
    pub addr: String,
    pub weight: Option<i64>,
}

/// `[server]`: listeners, storage and logging.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub http: S<String>,
    pub https: S<String>,
    pub certs_dir: S<String>,
    pub access_log: S<String>,
    pub grace_period: S<String>,
    pub compression: S<bool>,
    pub user: S<String>,
}

/// `[timeouts]`: durations like "10s", "500ms", "2m".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub client_header: S<String>,
    pub client_header_idle: S<String>,
    pub client_body: S<String>,
    pub client_body_max: S<String>,
    pub client_send_max: S<String>,
    pub client_min_rate: S<String>,
    pub client_min_rate_grace: S<String>,
    pub client_idle: S<String>,
    pub tls_handshake: S<String>,
    pub upstream_connect: S<String>,
    pub upstream_response: S<String>,
    pub upstream_idle: S<String>,
}

/// `[limits]`: request header limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_size: S<String>,
    pub max_headers: S<i64>,
    pub max_body_size: S<String>,
    pub max_uri_length: S<String>,
    pub max_connections: S<i64>,
    pub max_connections_per_ip: S<i64>,
    pub rate_per_ip: S<i64>,
    pub rate_burst: S<i64>,
}

/// `[buffering]`: slow-client buffering of bodies.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuffering {
    pub request_memory: S<String>,
    pub response_memory: S<String>,
    pub max_memory: S<String>,
    pub max_file_size: S<String>,
    pub temp_dir: S<String>,
}

/// `[[site]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub names: S<Vec<Spanned<String>>>,
    pub default: S<bool>,
    pub tls: S<String>,
    pub http_redirect: S<bool>,
    pub cert: S<String>,
    pub key: S<String>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<RawRoute>>,
}

/// `[[site.route]]`: exactly one of `static`, `proxy`, `redirect`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: S<String>,
    pub strip_prefix: S<bool>,
    #[serde(rename = "static")]
    pub static_root: S<String>,
    pub index: S<String>,
    pub fallback: S<String>,
    pub file_cache_valid: S<String>,
    pub proxy: S<RawProxy>,
    pub redirect: S<String>,
    pub status: S<i64>,
    pub buffer_requests: S<bool>,
    pub buffer_responses: S<bool>,
    pub max_body_size: S<String>,
    pub cache: S<RawRouteCache>,
}

/// A route's `cache = { ... }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteCache {
    pub ignore_query: S<bool>,
    pub key_headers: S<Vec<Spanned<String>>>,
    pub stale_if_error: S<String>,
    pub stale_while_revalidate: S<String>,
}

/// `[admin]`: the admin listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: S<String>,
}

/// `[cache]`: the response cache's storage.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub memory: S<String>,
    pub max_entry: S<String>,
    pub disk_dir: S<String>,
    pub disk_size: S<String>,
}

/// `[acme]`: automatic certificates. The issuer keys here describe one issuer; several go in
/// `[[acme.issuer]]` instead.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub email: S<String>,
    pub directory: S<String>,
    pub eab_kid: S<String>,
    pub eab_hmac_key: S<String>,
    pub profile: S<String>,
    pub ca_roots: S<Vec<Spanned<String>>>,
    pub challenges: S<Vec<Spanned<String>>>,
    pub retry_initial: S<String>,
    pub retry_max: S<String>,
    #[serde(default, rename = "issuer")]
    pub issuers: Vec<Spanned<RawIssuer>>,
}

/// `[[acme.issuer]]`: one ACME CA, tried in order.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    pub directory: S<String>,
    pub eab_kid: S<String>,
    pub eab_hmac_key: S<String>,
    pub profile: S<String>,
}
