//! Micro-benchmarks of the per-request pure code: routing lookup, header rewriting, and the
//! static path check on hostile inputs. Run: `cargo bench --bench hot_paths`.
//! Side-by-side load figures against nginx come from `benches/compare.sh`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};
use usher::config::Config;
use usher::headers::{set_forwarded, strip_hop_by_hop};
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

criterion_group!(benches, routing, headers, static_paths);
criterion_main!(benches);
