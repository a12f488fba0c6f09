//! Micro-benchmarks of the per-request code: routing lookup, header rewriting, the balancer's
//! pick, the cache key and a cache hit, and the static path check on hostile inputs. Run:
//! `cargo bench --bench hot_paths`.
//! Side-by-side load figures against nginx come from `benches/compare.sh`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};
use usher::config::Config;
use usher::headers::{set_forwarded, strip_hop_by_hop, Forwarding};
use usher::routing::Routes;
use usher::static_files::sanitize;

fn routes() -> Routes {
    let mut toml = String::new();
    for i in 0..20 {
        toml.push_str(&format!(
            "[[site]]\nnames = [\"site{i}.example.com\", \"*.site{i}.example.com\"]\ntls = \"off\"\n\
             [[site.route]]\npath = \"/\"\nproxy = [\"127.0.0.1:8000\"]\n\
             [[site.route]]\npath = \"/api/\"\nproxy = [\"127.0.0.1:8001\"]\n\
             [[site.route]]\npath = \"/api/v2/\"\nproxy = [\"127.0.0.1:8002\"]\n"
        ));
    }
    Routes::build(&Config::parse(&toml, Path::new("/tmp/bench.toml")).unwrap()).unwrap()
}

fn routing(c: &mut Criterion) {
    let r = routes();
    c.bench_function("route exact host + prefix", |b| {
        b.iter(|| {
            let site = r.site_for(black_box("site7.example.com")).unwrap();
            r.site(site)
                .route_for(black_box("/api/v2/users/42"))
                .map(|e| e.path.len())
        })
    });
    c.bench_function("route wildcard host, mixed case", |b| {
        b.iter(|| r.site_for(black_box("WWW.site19.example.com")))
    });
}

fn browser_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "site7.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120 Safari/537.36",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("cookie", "session=0123456789abcdef; theme=dark"),
        ("connection", "keep-alive"),
        ("x-forwarded-for", "203.0.113.9"),
    ] {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn headers(c: &mut Criterion) {
    let template = browser_headers();
    let host = HeaderValue::from_static("site7.example.com");
    c.bench_function("rewrite request headers", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |h| {
                strip_hop_by_hop(h);
                set_forwarded(h, "192.0.2.1".parse().unwrap(), true, Some(&host));
            },
            criterion::BatchSize::SmallInput,
        )
    });
    // what usher's HTTP/1.1 client does instead: the lines written after the request's own
    c.bench_function("request headers with forwarding lines", |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter_batched_ref(
            || template.clone(),
            |h| {
                strip_hop_by_hop(h);
                let f = Forwarding::take(h, "192.0.2.1".parse().unwrap(), true, Some(host.clone()));
                out.clear();
                f.write(&mut out);
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn static_paths(c: &mut Criterion) {
    let hostile = [
        "/assets/app.3f9a1c.js",
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/u/v/w/x/y/z.html",
        "/..%2f..%2f..%2fetc%2fpasswd",
        "/file%00.html",
        "/%c0%ae%c0%ae/etc/passwd",
    ];
    c.bench_function("static path check, hostile mix", |b| {
        b.iter(|| {
            for p in hostile {
                let _ = black_box(sanitize(black_box(p)));
            }
        })
    });
    let long = format!("/{}", "a/".repeat(2000));
    c.bench_function("static path check, 4 KB path", |b| {
        b.iter(|| sanitize(black_box(&long)).is_ok())
    });
}

fn balance(c: &mut Criterion) {
    use usher::config::Balance;
    use usher::upstream::balance::{Balancer, Key, Load};
    let labels: Vec<String> = (0..8).map(|i| format!("10.0.0.{i}:8000")).collect();
    let weights = vec![1u32; 8];
    let loads: Vec<Load> = (0..8).map(|_| Load::default()).collect();
    let refs: Vec<&Load> = loads.iter().collect();
    let headers = browser_headers();
    let key = Key {
        client: "192.0.2.1".parse().unwrap(),
        headers: &headers,
    };
    for (name, policy) in [
        ("balance pick, round_robin, 8 members", Balance::RoundRobin),
        (
            "balance pick, least_requests, 8 members",
            Balance::LeastRequests,
        ),
        ("balance pick, peak_ewma, 8 members", Balance::PeakEwma),
        ("balance pick, ip_hash, 8 members", Balance::IpHash),
    ] {
        let b8 = Balancer::new(&policy, &weights, &labels);
        c.bench_function(name, |b| {
            b.iter(|| b8.pick(&weights, &refs[..], black_box(&key), &|i| i != 3))
        });
    }
}

fn cache(c: &mut Criterion) {
    use usher::cache::{Cache, Lookup};
    use usher::config::{CacheSettings, RouteCache};
    let settings = CacheSettings {
        memory: 64 << 20,
        max_entry: 1 << 20,
        disk: None,
    };
    let route = RouteCache::default();
    let request = |path: &str| {
        let mut r = http::Request::get(path).body(()).unwrap();
        *r.headers_mut() = browser_headers();
        r.into_parts().0
    };
    let parts = request("/products/42?color=red");
    c.bench_function("cache key", |b| {
        b.iter(|| {
            let parts = black_box(&parts);
            Cache::key(
                &route,
                true,
                "site7.example.com",
                &parts.uri,
                &parts.headers,
            )
        })
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = Cache::new(&settings).unwrap();
    let key: std::sync::Arc<str> = Cache::key(
        &route,
        true,
        "site7.example.com",
        &parts.uri,
        &parts.headers,
    )
    .into();
    // store one fresh entry through the real path: a miss, then the app's response
    let Lookup::Miss(pending) = rt.block_on(cache.lookup(key.clone(), &parts, &route)) else {
        panic!("a miss first")
    };
    let head = http::Response::builder()
        .header("cache-control", "max-age=3600")
        .header("content-type", "text/plain")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let usher::cache::After::Store(policy) = cache.after(&pending, &head) else {
        panic!("storable")
    };
    cache.store(
        &pending,
        *policy,
        &head,
        bytes::Bytes::from_static(&[b'x'; 100]),
    );
    drop(pending);
    c.bench_function("cache lookup, fresh hit of 100 bytes", |b| {
        b.iter(|| {
            let hit = rt.block_on(cache.lookup(key.clone(), black_box(&parts), &route));
            matches!(hit, Lookup::Hit(_))
        })
    });
    for (name, encoded) in [
        ("cache fresh hit of 100 bytes (the fast path)", false),
        (
            "cache fresh hit of 100 bytes (the fast path, encoded head)",
            true,
        ),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                let parts = black_box(&parts);
                cache
                    .fresh_hit(&key, &parts.method, &parts.headers, encoded)
                    .is_some()
            })
        });
    }
}

criterion_group!(benches, routing, headers, balance, cache, static_paths);
criterion_main!(benches);
