//! Config conversion: defaults, every kind of mistake, and error locations.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/usher/proxy.toml"))
}

fn issues(text: &str) -> Vec<ConfigIssue> {
    parse(text).expect_err("config should be rejected").issues
}

const MINIMAL: &str = r#"
[[site]]
names = ["example.com"]
tls = "off"
[[site.route]]
path = "/"
proxy = ["127.0.0.1:8000"]
"#;

#[test]
fn defaults_are_applied() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.http, Some("0.0.0.0:80".parse().unwrap()));
    assert_eq!(c.https, Some("0.0.0.0:443".parse().unwrap()));
    assert_eq!(c.certs_dir, PathBuf::from("/etc/usher/certs"));
    assert_eq!(c.access_log, AccessLogFormat::Text);
    assert_eq!(c.grace_period, Duration::from_secs(30));
    assert_eq!(c.timeouts.client_header, Duration::from_secs(10));
    assert_eq!(c.timeouts.upstream_idle, Duration::from_millis(1500));
    assert_eq!(c.limits.max_header_size, 64 * 1024);
    let site = &c.sites[0];
    assert!(!site.default);
    assert!(site.http_redirect);
    assert_eq!(site.tls, TlsMode::Off);
    assert!(!site.routes[0].strip_prefix);
    match &site.routes[0].action {
        Action::Proxy(ProxyTarget::Inline(p)) => {
            assert_eq!(
                p.balance,
                Balance::RoundRobin,
                "inline lists are round robin"
            );
            assert_eq!(
                p.members,
                [PoolMember {
                    addr: UpstreamAddr::Tcp {
                        host: "127.0.0.1".into(),
                        port: 8000
                    },
                    weight: 1
                }]
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.summary(),
        "1 site, 1 route, http 0.0.0.0:80, https 0.0.0.0:443"
    );
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let c = parse(&MINIMAL.replace("127.0.0.1:8000", "unix:run/app.sock")).unwrap();
    match &c.sites[0].routes[0].action {
        Action::Proxy(ProxyTarget::Inline(p)) => {
            assert_eq!(
                p.members[0].addr,
                UpstreamAddr::Unix("/etc/usher/run/app.sock".into())
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn names_are_lower_cased_and_routes_sorted_longest_first() {
    let c = parse(
        r#"
[[site]]
names = ["Example.COM.", "*.Example.com", "10.0.0.1", "::1"]
tls = "off"
[[site.route]]
path = "/"
redirect = "/a"
[[site.route]]
path = "/deep/er/"
redirect = "/b"
[[site.route]]
path = "/deep/"
redirect = "/c"
"#,
    )
    .unwrap();
    assert_eq!(
        c.sites[0].names,
        ["example.com", "*.example.com", "10.0.0.1", "::1"]
    );
    let paths: Vec<&str> = c.sites[0].routes.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/deep/er/", "/deep/", "/"]);
}

#[test]
fn syntax_error_has_a_location() {
    let i = issues("[server\nhttp = 1");
    assert_eq!(i.len(), 1);
    assert_eq!(i[0].line_col.map(|l| l.0), Some(1));
}

#[test]
fn unknown_keys_are_errors() {
    let i = issues(&MINIMAL.replace("tls = \"off\"", "tls = \"off\"\nnmaes = []"));
    assert!(i[0].message.contains("unknown field `nmaes`"), "{i:?}");
    assert_eq!(i[0].line_col.map(|l| l.0), Some(5));
}

#[test]
fn public_names_default_to_acme_and_local_ones_to_internal() {
    let site = |names: &str| {
        MINIMAL
            .replace("tls = \"off\"", "")
            .replace("[\"example.com\"]", names)
    };
    assert_eq!(
        parse(&site("[\"example.com\"]")).unwrap().sites[0].tls,
        TlsMode::Acme
    );
    for local in [
        "[\"localhost\"]",
        "[\"a.localhost\", \"b.test\"]",
        "[\"127.0.0.1\"]",
        "[\"nas.home.arpa\"]",
    ] {
        let text = site(local).replace("[[site]]", "[[site]]\ndefault = true");
        assert_eq!(
            parse(&text).unwrap().sites[0].tls,
            TlsMode::Internal,
            "{local}"
        );
    }
    // one public name among local ones makes the site ACME
    assert_eq!(
        parse(&site("[\"localhost\", \"example.com\"]"))
            .unwrap()
            .sites[0]
            .tls,
        TlsMode::Acme
    );
}

#[test]
fn acme_sites_need_names_a_ca_can_validate() {
    let acme = |names: &str| {
        MINIMAL
            .replace("tls = \"off\"", "tls = \"acme\"")
            .replace("[\"example.com\"]", names)
    };
    let i = issues(&acme("[\"*.example.com\"]"));
    assert!(i[0].message.contains("DNS-01"), "{i:?}");
    let i = issues(&acme("[\"192.0.2.1\"]").replace("[[site]]", "[[site]]\ndefault = true"));
    assert!(i[0].message.contains("IP address"), "{i:?}");
}

#[test]
fn acme_defaults_and_issuers() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.acme.issuers.len(), 1);
    assert_eq!(c.acme.issuers[0].directory, LETSENCRYPT_PRODUCTION);
    assert_eq!(
        c.acme.challenges,
        [ChallengeKind::Http01, ChallengeKind::TlsAlpn01]
    );
    let c = parse(&format!("[acme]\ndirectory = \"staging\"\nprofile = \"shortlived\"\neab_kid = \"k\"\neab_hmac_key = \"aGVsbG8\"\n{MINIMAL}")).unwrap();
    let issuer = &c.acme.issuers[0];
    assert_eq!(issuer.directory, LETSENCRYPT_STAGING);
    assert_eq!(issuer.profile.as_deref(), Some("shortlived"));
    assert_eq!(issuer.eab.as_ref().unwrap().hmac_key, b"hello");
    assert!(
        !format!("{issuer:?}").contains("hello"),
        "key material in Debug output"
    );
    let two = "[[acme.issuer]]\ndirectory = \"https://a.example/dir\"\n[[acme.issuer]]\ndirectory = \"https://b.example/dir\"\n";
    let c = parse(&format!("{two}{MINIMAL}")).unwrap();
    assert_eq!(c.acme.issuers.len(), 2);
    let i = issues(&format!("[acme]\ndirectory = \"staging\"\n{two}{MINIMAL}"));
    assert!(i[0].message.contains("not both"), "{i:?}");
    let i = issues(&format!(
        "[acme]\ndirectory = \"http://insecure/dir\"\n{MINIMAL}"
    ));
    assert!(i[0].message.contains("https://"), "{i:?}");
    let i = issues(&format!("[acme]\neab_kid = \"k\"\n{MINIMAL}"));
    assert!(
        i[0].message.contains("both eab_kid and eab_hmac_key"),
        "{i:?}"
    );
    let i = issues(&format!(
        "[acme]\neab_kid = \"k\"\neab_hmac_key = \"not base64!\"\n{MINIMAL}"
    ));
    assert!(i[0].message.contains("base64url"), "{i:?}");
}

#[test]
fn acme_challenges_need_their_listener() {
    let acme_site = MINIMAL.replace("tls = \"off\"", "tls = \"acme\"");
    let i = issues(&format!(
        "[server]\nhttp = \"off\"\n[acme]\nchallenges = [\"http-01\"]\n{acme_site}"
    ));
    assert!(i[0].message.contains("needs server.http"), "{i:?}");
    let i = issues(&format!("[acme]\nchallenges = [\"dns-01\"]\n{acme_site}"));
    assert!(
        i[0].message.contains("not a challenge usher answers"),
        "{i:?}"
    );
    let c = parse(&format!("[server]\nhttp = \"off\"\n{acme_site}")).unwrap();
    assert_eq!(c.acme.challenges, [ChallengeKind::TlsAlpn01]);
    let i = issues(&format!(
        "[acme]\nretry_initial = \"1h\"\nretry_max = \"1m\"\n{acme_site}"
    ));
    assert!(i[0].message.contains("shorter than"), "{i:?}");
}

#[test]
fn tls_modes_and_file_pairs() {
    let i = issues(&MINIMAL.replace("tls = \"off\"", "tls = \"magic\""));
    assert!(i[0].message.contains("allowed"), "{i:?}");
    let i = issues(&MINIMAL.replace("tls = \"off\"", "cert = \"a.pem\""));
    assert!(i[0].message.contains("both cert and key"), "{i:?}");
    let i = issues(&MINIMAL.replace(
        "tls = \"off\"",
        "tls = \"internal\"\ncert = \"a.pem\"\nkey = \"b.pem\"",
    ));
    assert!(i[0].message.contains("does not take cert/key"), "{i:?}");
    let i = issues(&MINIMAL.replace(
        "tls = \"off\"",
        "cert = \"/nonexistent/a.pem\"\nkey = \"/nonexistent/b.pem\"",
    ));
    assert_eq!(i.len(), 2, "{i:?}");
    assert!(
        i[0].message.contains("cannot read /nonexistent/a.pem"),
        "{i:?}"
    );
    // a TLS site needs the TLS listener
    let i = issues(&format!(
        "[server]\nhttps = \"off\"\n{}",
        MINIMAL.replace("tls = \"off\"", "")
    ));
    assert!(i[0].message.contains("server.https is \"off\""), "{i:?}");
}

#[test]
fn route_actions_and_their_options() {
    let base = "[[site]]\nnames = [\"a.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\n";
    let i = issues(base);
    assert!(i[0]
        .message
        .contains("exactly one of static, proxy, redirect"));
    let i = issues(&format!(
        "{base}proxy = [\"127.0.0.1:1\"]\nredirect = \"/x\""
    ));
    assert!(i[0].message.contains("exactly one"));
    let i = issues(&format!(
        "{base}proxy = [\"127.0.0.1:1\"]\nindex = \"x.html\""
    ));
    assert_eq!(i[0].key, "site[0].route[0].index");
    assert!(i[0].message.contains("only applies to static routes"));
    let i = issues(&format!("{base}proxy = []"));
    assert!(i[0].message.contains("empty"));
    let i = issues(&format!("{base}redirect = \"/x\"\nstatus = 200"));
    assert!(i[0].message.contains("not a redirect status"));
    let i = issues(&format!("{base}static = \"/nonexistent-usher-dir\""));
    assert!(i[0].message.contains("not a readable folder"));
    let i = issues(&format!(
        "{base}redirect = \"/x\"\n[[site.route]]\npath = \"/\"\nredirect = \"/y\""
    ));
    assert!(i[0].message.contains("already used"), "{i:?}");
}

#[test]
fn upstream_addresses() {
    assert_eq!(
        parse_upstream("app:8000").unwrap(),
        UpstreamAddr::Tcp {
            host: "app".into(),
            port: 8000
        }
    );
    assert_eq!(
        parse_upstream("[::1]:80").unwrap(),
        UpstreamAddr::Tcp {
            host: "::1".into(),
            port: 80
        }
    );
    assert_eq!(
        parse_upstream("unix:/run/a.sock").unwrap(),
        UpstreamAddr::Unix("/run/a.sock".into())
    );
    for bad in [
        "app",
        "app:0",
        "app:99999",
        ":80",
        "unix:",
        "http://app:80",
        "a b:80",
        "[::1:80",
    ] {
        assert!(parse_upstream(bad).is_err(), "{bad}");
    }
}

#[test]
fn cross_site_rules() {
    let two = format!("{MINIMAL}\n{MINIMAL}");
    let i = issues(&two);
    assert!(
        i.iter()
            .any(|i| i.message.contains("already a name of site[0]")),
        "{i:?}"
    );
    let defaults = MINIMAL.replace("tls = \"off\"", "tls = \"off\"\ndefault = true");
    let i = issues(&format!(
        "{defaults}\n{}",
        defaults.replace("example.com", "other.com")
    ));
    assert!(i.iter().any(|i| i.key == "site[1].default"), "{i:?}");
    let i = issues("");
    assert!(i[0].message.contains("no sites"));
}

#[test]
fn listeners_limits_and_formats() {
    let tls_site = MINIMAL.replace("tls = \"off\"", "");
    let c = parse(&format!(
        "[server]\nhttp = \"off\"\nhttps = \"[::]:8443\"\naccess_log = \"json\"\n{tls_site}"
    ))
    .unwrap();
    assert_eq!(c.http, None);
    assert_eq!(c.https, Some("[::]:8443".parse().unwrap()));
    assert_eq!(c.access_log, AccessLogFormat::Json);
    let i = issues(&format!(
        "[server]\nhttp = \"off\"\nhttps = \"off\"\n{MINIMAL}"
    ));
    assert!(i[0].message.contains("both listeners are off"));
    // plain listener off and no TLS site: nothing to serve
    let i = issues(&format!("[server]\nhttp = \"off\"\n{MINIMAL}"));
    assert!(i[0].message.contains("nothing would be served"), "{i:?}");
    // one address for both listeners
    let i = issues(&format!(
        "[server]\nhttp = \"127.0.0.1:8080\"\nhttps = \"127.0.0.1:8080\"\n{MINIMAL}"
    ));
    assert!(i[0].message.contains("different ports"), "{i:?}");
    let i = issues(&format!("[server]\naccess_log = \"xml\"\n{MINIMAL}"));
    assert!(i[0].message.contains("\"text\", \"json\", \"off\""));
    let i = issues(&format!(
        "[limits]\nmax_header_size = \"1KiB\"\nmax_headers = 0\n{MINIMAL}"
    ));
    assert_eq!(i.len(), 2, "{i:?}");
    let c = parse(&format!(
        "[limits]\nmax_header_size = \"16KiB\"\nmax_headers = 50\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(
        (c.limits.max_header_size, c.limits.max_headers),
        (16384, 50)
    );
}

#[test]
fn ip_names_on_a_tls_site_need_the_default_site() {
    let site =
        "[[site]]\nnames = [\"10.0.0.5\"]\n[[site.route]]\npath = \"/\"\nredirect = \"/x\"\n";
    let i = issues(site);
    assert!(i[0].message.contains("send no SNI"), "{i:?}");
    assert!(parse(&site.replace("[\"10.0.0.5\"]", "[\"10.0.0.5\"]\ndefault = true")).is_ok());
    assert!(parse(&site.replace("[\"10.0.0.5\"]", "[\"10.0.0.5\"]\ntls = \"off\"")).is_ok());
}

#[test]
fn redirect_targets_and_fallback_files_are_checked() {
    let base = "[[site]]\nnames = [\"a.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\n";
    let i = issues(&format!("{base}redirect = \"/x\\u0001\""));
    assert_eq!(i[0].key, "site[0].route[0].redirect", "{i:?}");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display();
    let i = issues(&format!(
        "{base}static = \"{root}\"\nfallback = \"app.html\""
    ));
    assert!(i[0].message.contains("is not a file"), "{i:?}");
    std::fs::write(dir.path().join("app.html"), "x").unwrap();
    assert!(parse(&format!(
        "{base}static = \"{root}\"\nfallback = \"app.html\""
    ))
    .is_ok());
}

#[test]
fn named_upstream_pools() {
    let site = MINIMAL.replace("proxy = [\"127.0.0.1:8000\"]", "proxy = \"app\"");
    let c = parse(&format!(
        "[upstream.app]\nmembers = [\"127.0.0.1:8001\", {{ addr = \"127.0.0.1:8002\", weight = 3 }}]\n{site}"
    ))
    .unwrap();
    let app = &c.upstreams["app"];
    assert_eq!(app.balance, Balance::PeakEwma, "the default policy");
    assert_eq!(
        app.members.iter().map(|m| m.weight).collect::<Vec<_>>(),
        [1, 3]
    );
    assert!(
        matches!(&c.sites[0].routes[0].action, Action::Proxy(ProxyTarget::Pool(n)) if n == "app")
    );
    let c = parse(&format!(
        "[upstream.app]\nmembers = [\"a:1\"]\nbalance = \"cookie\"\nhash_cookie = \"sid\"\n{site}"
    ))
    .unwrap();
    assert_eq!(c.upstreams["app"].balance, Balance::Cookie("sid".into()));
    let pool = &c.upstreams["app"];
    assert_eq!(
        (pool.retries, pool.eject_after, pool.eject_for),
        (2, 5, Duration::from_secs(10))
    );
    assert!(pool.health.is_none());
    assert_eq!(
        (pool.max_ejected_percent, pool.protocol),
        (50, crate::config::UpstreamProtocol::Http1)
    );
    assert_eq!(
        (pool.max_conns, pool.queue, pool.queue_timeout),
        (None, 1024, Duration::from_secs(10))
    );
    let c = parse(&format!(
        "[upstream.app]\nmembers = [\"a:1\"]\n[upstream.app.health]\npath = \"/healthz\"\nstatus = \"204\"\n{site}"
    ))
    .unwrap();
    let hc = c.upstreams["app"].health.as_ref().unwrap();
    assert_eq!(
        (hc.status, hc.interval, hc.healthy_after, hc.unhealthy_after),
        ((204, 204), Duration::from_secs(5), 1, 3)
    );
}

#[test]
fn upstream_retry_ejection_and_health_mistakes() {
    let site = MINIMAL.replace("proxy = [\"127.0.0.1:8000\"]", "proxy = \"app\"");
    let pool = "[upstream.app]\nmembers = [\"a:1\"]\n";
    let cases = [
        ("retries = 11\n", "upstream.app.retries", "outside 0..10"),
        (
            "eject_after = -1\n",
            "upstream.app.eject_after",
            "outside 0..1000",
        ),
        (
            "eject_for = \"soon\"\n",
            "upstream.app.eject_for",
            "not a duration",
        ),
        (
            "[upstream.app.health]\npath = \"healthz\"\n",
            "upstream.app.health.path",
            "must start with",
        ),
        (
            "[upstream.app.health]\npath = \"/h\"\nstatus = \"300-200\"\n",
            "upstream.app.health.status",
            "not a status or range",
        ),
        (
            "[upstream.app.health]\npath = \"/h\"\nhealthy_after = 0\n",
            "upstream.app.health.healthy_after",
            "outside 1..100",
        ),
        (
            "[upstream.app.health]\ninterval = \"1s\"\n",
            "upstream.app.health.path",
            "missing",
        ),
        (
            "max_conns = -2\n",
            "upstream.app.max_conns",
            "outside 0..100000",
        ),
        (
            "queue_timeout = \"0s\"\n",
            "upstream.app.queue_timeout",
            "zero",
        ),
        (
            "max_ejected_percent = 101\n",
            "upstream.app.max_ejected_percent",
            "outside 0..100",
        ),
        (
            "protocol = \"h2\"\n",
            "upstream.app.protocol",
            "allowed: \"http1\", \"h2c\"",
        ),
    ];
    for (extra, key, msg) in cases {
        let i = issues(&format!("{pool}{extra}{site}"));
        assert!(
            i.iter().any(|i| i.key == key && i.message.contains(msg)),
            "{extra}: {i:?}"
        );
    }
}

#[test]
fn upstream_pool_mistakes_name_the_key() {
    let site = MINIMAL.replace("proxy = [\"127.0.0.1:8000\"]", "proxy = \"app\"");
    let cases = [
        (
            "[upstream.app]\nmembers = []\n",
            "upstream.app.members",
            "empty",
        ),
        (
            "[upstream.ap]\nmembers = [\"a:1\"]\n",
            "site[0].route[0].proxy",
            "unknown upstream \"app\" (defined: \"ap\")",
        ),
        (
            "[upstream.app]\nmembers = [\"a:1\", \"a:1\"]\n",
            "upstream.app.members",
            "listed twice",
        ),
        (
            "[upstream.app]\nmembers = [{ addr = \"a:1\", weight = 0 }]\n",
            "upstream.app.members",
            "outside 1..1000",
        ),
        (
            "[upstream.app]\nmembers = [\"a:1\"]\nbalance = \"fastest\"\n",
            "upstream.app.balance",
            "not a policy",
        ),
        (
            "[upstream.app]\nmembers = [\"a:1\"]\nbalance = \"header_hash\"\n",
            "upstream.app.hash_header",
            "needs hash_header",
        ),
        (
            "[upstream.app]\nmembers = [\"a:1\"]\nhash_cookie = \"sid\"\n",
            "upstream.app.hash_cookie",
            "only applies",
        ),
        (
            "",
            "site[0].route[0].proxy",
            "unknown upstream \"app\" (defined: none",
        ),
    ];
    for (pool, key, msg) in cases {
        let i = issues(&format!("{pool}{site}"));
        assert!(
            i.iter()
                .any(|i| i.key == key && i.message.contains(msg) && i.line_col.is_some()),
            "{pool}: {i:?}"
        );
    }
}

#[test]
fn buffering_limits_and_body_timeouts() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(
        (
            c.buffering.request_memory,
            c.buffering.response_memory,
            c.buffering.max_memory
        ),
        (64 << 10, 1 << 20, 256 << 20)
    );
    assert_eq!(
        (
            c.limits.max_body_size,
            c.limits.max_uri_length,
            c.limits.max_connections
        ),
        (10 << 20, 8 << 10, 0)
    );
    assert_eq!(
        (c.timeouts.client_body, c.timeouts.client_min_rate),
        (Duration::from_secs(60), 512)
    );
    let body = c.sites[0].routes[0].body;
    assert!(body.buffer_requests && body.buffer_responses);
    assert_eq!(body.max_body_size, 10 << 20);
    let c = parse(&format!(
        "[limits]\nmax_body_size = \"1KiB\"\n[timeouts]\nclient_min_rate = \"2KiB/s\"\n{}",
        MINIMAL.replace(
            "proxy = [\"127.0.0.1:8000\"]",
            "proxy = [\"127.0.0.1:8000\"]\nbuffer_responses = false\nmax_body_size = \"5MiB\""
        )
    ))
    .unwrap();
    let body = c.sites[0].routes[0].body;
    assert_eq!(
        (
            body.buffer_requests,
            body.buffer_responses,
            body.max_body_size
        ),
        (true, false, 5 << 20)
    );
    assert_eq!(
        (c.limits.max_body_size, c.timeouts.client_min_rate),
        (1024, 2048)
    );
    let cases = [
        (
            "[limits]\nmax_body_size = \"lots\"\n",
            "limits.max_body_size",
            "",
        ),
        (
            "[limits]\nmax_uri_length = \"1MiB\"\n",
            "limits.max_uri_length",
            "outside",
        ),
        (
            "[limits]\nmax_connections = -1\n",
            "limits.max_connections",
            "outside",
        ),
        (
            "[buffering]\ntemp_dir = \"/nonexistent/usher\"\n",
            "buffering.temp_dir",
            "not a folder",
        ),
        (
            "[server]\nuser = \"no-such-user-here\"\n",
            "server.user",
            "no user",
        ),
        (
            "[cache]\ndisk_dir = \"/dev/null\"\n",
            "cache.disk_dir",
            "not a folder",
        ),
        (
            "[cache]\ndisk_size = \"1GiB\"\n",
            "cache.disk_size",
            "only with cache.disk_dir",
        ),
        (
            "[cache]\ndisk_dir = \"c\"\ndisk_size = \"1KiB\"\n",
            "cache.disk_size",
            "outside",
        ),
        (
            "[timeouts]\nclient_min_rate = \"fast\"\n",
            "timeouts.client_min_rate",
            "",
        ),
    ];
    for (extra, key, msg) in cases {
        let i = issues(&format!("{extra}{MINIMAL}"));
        assert!(
            i.iter().any(|i| i.key == key && i.message.contains(msg)),
            "{extra}: {i:?}"
        );
    }
    let i = issues(&MINIMAL.replace(
        "proxy = [\"127.0.0.1:8000\"]",
        "static = \".\"\nbuffer_requests = false",
    ));
    assert!(
        i.iter().any(|i| i.key.ends_with("buffer_requests")
            && i.message.contains("only applies to proxy routes")),
        "{i:?}"
    );
}

#[test]
fn route_caches_and_their_mistakes() {
    let cached = MINIMAL.replace(
        "proxy = [\"127.0.0.1:8000\"]",
        "proxy = [\"127.0.0.1:8000\"]\ncache = { ignore_query = true, key_headers = [\"Accept-Language\"], stale_if_error = \"1h\" }",
    );
    let c = parse(&cached).unwrap();
    let rc = c.sites[0].routes[0].cache.clone().unwrap();
    assert!(rc.ignore_query);
    assert_eq!(
        rc.key_headers,
        [http::HeaderName::from_static("accept-language")]
    );
    assert_eq!(rc.stale_if_error, Duration::from_secs(3600));
    assert_eq!((c.cache.memory, c.cache.max_entry), (64 << 20, 1 << 20));
    assert!(parse(MINIMAL).unwrap().sites[0].routes[0].cache.is_none());
    for (text, key, msg) in [
        (
            cached.replace("\"Accept-Language\"", "\"bad header\""),
            "site[0].route[0].cache.key_headers",
            "not a header name",
        ),
        (
            cached.replace("ignore_query = true", "ignore_qeury = true"),
            "",
            "ignore_qeury",
        ),
        (
            format!("[cache]\nmemory = \"lots\"\n{MINIMAL}"),
            "cache.memory",
            "",
        ),
    ] {
        let i = issues(&text);
        assert!(
            i.iter()
                .any(|i| i.key.contains(key) && format!("{i:?}").contains(msg)),
            "{text}: {i:?}"
        );
    }
}
