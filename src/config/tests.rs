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
        Action::Proxy(a) => assert_eq!(
            a,
            &[UpstreamAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 8000
            }]
        ),
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
        Action::Proxy(a) => assert_eq!(a[0], UpstreamAddr::Unix("/etc/usher/run/app.sock".into())),
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
fn acme_is_not_available_yet() {
    let i = issues(&MINIMAL.replace("tls = \"off\"", "tls = \"acme\""));
    assert!(i[0].message.contains("not available"), "{i:?}");
    assert_eq!(i[0].key, "site[0].tls");
    let i = issues(&format!("[acme]\nemail = \"a@b.c\"\n{MINIMAL}"));
    assert_eq!(i[0].key, "acme");
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
