//! The admin API beyond reload: /metrics (valid OpenMetrics text whose counters agree with
//! what a client did), /upstreams and /certs.

use crate::support::{sample, Client, Proto, TestServer, Upstream};

async fn scrape(admin: &mut Client) -> String {
    let r = admin.get("admin", "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .starts_with("application/openmetrics-text"));
    let text = r.text();
    if let Err(e) = openmetrics_parser::openmetrics::parse_openmetrics(&text) {
        panic!("not valid OpenMetrics text: {e:?}\n{text}");
    }
    text
}

/// 21 requests to a route, 2 to a caching route, 3 for an unknown site: /metrics parses as
/// OpenMetrics and its counters say exactly that.
#[tokio::test]
async fn metrics_are_valid_and_agree_with_the_client() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[site]]\nnames = [\"app.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\nproxy = [\"{0}\"]\n[[site.route]]\npath = \"/cache/\"\nproxy = [\"{0}\"]\ncache = {{}}\n",
        app.addr
    ))
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let mut body_bytes = 0;
    for i in 0..20 {
        let r = c.get("app.test", &format!("/x{i}")).await;
        assert_eq!(r.status, 200);
        body_bytes += r.body.len();
    }
    for _ in 0..2 {
        c.get("app.test", "/cache/max-age=60/a").await;
    }
    for _ in 0..3 {
        assert_eq!(c.get("nobody.test", "/").await.status.as_u16() / 100, 4);
    }
    // one more connection, open while scraping (the 4xx answers may have closed `c`)
    let mut open = Client::plain(usher.http, Proto::H1).await;
    let r = open.get("app.test", "/x20").await;
    body_bytes += r.body.len();
    let mut admin = Client::plain(usher.admin(), Proto::H1).await;
    let route = r#"site="app.test",route="/""#;
    // each request is counted as its response completes: wait for the last ones
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(&mut admin).await;
        let twos = sample(
            &text,
            "usher_requests_total",
            &format!(r#"{route},status="2xx",proto="http1.1""#),
        );
        let fours = sample(
            &text,
            "usher_requests_total",
            r#"site="-",route="-",status="4xx",proto="http1.1""#,
        );
        if twos == Some(21.0) && fours == Some(3.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        sample(
            &text,
            "usher_requests_total",
            &format!(r#"{route},status="2xx",proto="http1.1""#)
        ),
        Some(21.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "usher_requests_total",
            r#"site="-",route="-",status="4xx",proto="http1.1""#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, "usher_request_duration_seconds_count", route),
        Some(21.0)
    );
    assert_eq!(
        sample(&text, "usher_response_body_bytes_total", route),
        Some(body_bytes as f64)
    );
    assert_eq!(
        sample(&text, "usher_cache_lookups_total", r#"result="hit""#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "usher_cache_lookups_total", r#"result="miss""#),
        Some(1.0)
    );
    assert_eq!(sample(&text, "usher_config_generation", ""), Some(1.0));
    assert!(sample(&text, "usher_connections_open", "").unwrap() >= 1.0);
    let pool = format!(r#"pool="app.test/",member="{}""#, app.addr);
    assert_eq!(
        sample(&text, "usher_upstream_member_up", &pool),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "usher_upstream_response_seconds_count",
            r#"pool="app.test/""#
        ),
        Some(21.0)
    );
    assert_eq!(
        sample(
            &text,
            "usher_upstream_response_seconds_count",
            r#"pool="app.test/cache/""#
        ),
        Some(1.0),
        "one miss went upstream"
    );
}

/// /upstreams shows a member its health checks took out; /certs the local-CA
/// certificate's expiry; /metrics that expiry as a timestamp.
#[tokio::test]
async fn upstreams_and_certs_report_state() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let usher = TestServer::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[upstream.app]\nmembers = [\"{}\", \"{}\"]\n[upstream.app.health]\npath = \"/healthz\"\ninterval = \"100ms\"\nunhealthy_after = 1\n[[site]]\nnames = [\"app.test\"]\ntls = \"internal\"\n[[site.route]]\npath = \"/\"\nproxy = \"app\"\n",
        a.addr, b.addr
    ))
    .await;
    b.set_health(503);
    let mut admin = Client::plain(usher.admin(), Proto::H1).await;
    let mut v = serde_json::Value::Null;
    for _ in 0..200 {
        v = serde_json::from_str(&admin.get("admin", "/upstreams").await.text()).unwrap();
        if v["pools"][0]["members"][1]["healthy"] == false {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let pool = &v["pools"][0];
    assert_eq!(pool["name"], "app");
    assert_eq!(pool["members"][0]["addr"], a.addr.as_str());
    assert_eq!(pool["members"][0]["healthy"], true);
    assert_eq!(pool["members"][1]["healthy"], false, "{v:#}");
    let text = scrape(&mut admin).await;
    assert_eq!(
        sample(
            &text,
            "usher_upstream_member_up",
            &format!(r#"pool="app",member="{}""#, b.addr)
        ),
        Some(0.0)
    );

    let certs: serde_json::Value =
        serde_json::from_str(&admin.get("admin", "/certs").await.text()).unwrap();
    let site = &certs["sites"][0];
    assert_eq!(site["names"][0], "app.test");
    assert_eq!(site["tls"], "internal");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expires = site["expires_at"].as_u64().expect("an expiry");
    assert!(expires > now, "{certs:#}");
    assert_eq!(
        sample(
            &text,
            "usher_certificate_expiry_timestamp_seconds",
            r#"site="app.test""#
        ),
        Some(expires as f64)
    );
    // none of it on the public listener: a TLS site, so its plain listener redirects
    let mut public = Client::plain(usher.http, Proto::H1).await;
    for path in ["/metrics", "/upstreams", "/certs"] {
        assert_eq!(public.get("app.test", path).await.status, 308, "{path}");
    }
}

/// With no pool, no cache, no certificate and no request yet, /metrics is still valid
/// OpenMetrics text (no family without series).
#[tokio::test]
async fn metrics_of_an_idle_server_without_pools_are_valid() {
    let usher = TestServer::start(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[site]]\nnames = [\"a.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\nredirect = \"/x\"\n",
    )
    .await;
    let mut admin = Client::plain(usher.admin(), Proto::H1).await;
    let text = scrape(&mut admin).await;
    assert_eq!(sample(&text, "usher_config_generation", ""), Some(1.0));
    assert!(!text.contains("usher_upstream"), "{text}");
}
