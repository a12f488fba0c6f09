//! Header rewriting for the forward path: pure functions, unit-tested here and benchmarked.

use std::cell::RefCell;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Header maps of requests already forwarded, emptied and kept on this thread for the next
/// heads it parses: a map's two allocations (its index and its entries) are made once, not
/// for every request. At most this many are kept.
const SPARE_MAPS: usize = 16;
/// A map grown past this many entries (a head with many headers) is let go of, not kept.
const SPARE_MAP_LIMIT: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for `n` entries: a spare one when this thread has one that large.
pub fn empty_map(n: usize) -> HeaderMap {
    SPARE
        .with_borrow_mut(Vec::pop)
        .filter(|m| m.capacity() >= n)
        .unwrap_or_else(|| HeaderMap::with_capacity(n))
}

/// Empties `map` (its values, which may share a connection's read buffer, go now) and keeps
/// it for [`empty_map`].
pub fn recycle(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > SPARE_MAP_LIMIT {
        return;
    }
    map.clear();
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < SPARE_MAPS {
            spare.push(map);
        }
    });
}

/// The fixed hop-by-hop headers (RFC 9110 section 7.6.1, plus the non-standard ones proxies
/// are known to leak). `Proxy-*` are handled by prefix. `Trailer` is end to end (RFC 9110
/// section 6.6.2) and kept: an HTTP/1.1 client only gets the trailers it announces.
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

/// The items of a comma-separated list header (RFC 9110 section 5.6.1), across all its
/// fields, trimmed; fields that are not text are skipped.
pub fn list_items(
    headers: &HeaderMap,
    name: impl header::AsHeaderName,
) -> impl Iterator<Item = &str> + '_ {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Removes hop-by-hop headers: `Connection` and every header it names, the fixed list above,
/// and every `Proxy-*` header (`Proxy-Authorization` is for this hop only; `Proxy-Connection`
/// is a legacy Connection).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // The common case, a request with none of them, costs one look at each name (comparing
    // standard names is comparing numbers) and no hashing or allocation.
    if !headers
        .keys()
        .any(|k| HOP_BY_HOP.contains(k) || is_proxy(k))
    {
        return;
    }
    // The usual tokens (keep-alive, close, upgrade) name nothing beyond the fixed list, so
    // this rarely allocates.
    let named: Vec<HeaderName> = list_items(headers, header::CONNECTION)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| !HOP_BY_HOP.contains(n) && n.as_str() != "close")
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    // (empty, and so not allocated, without Proxy-* headers)
    let proxy: Vec<HeaderName> = headers.keys().filter(|k| is_proxy(k)).cloned().collect();
    for name in proxy {
        headers.remove(name);
    }
}

fn is_proxy(name: &HeaderName) -> bool {
    name.as_str().starts_with("proxy-")
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Sets the X-Forwarded-* headers on a request going upstream: `X-Forwarded-For` gets the
/// client address appended (earlier proxies' entries are kept, all in one field),
/// `X-Forwarded-Proto` and `X-Forwarded-Host` are set from what usher saw, replacing anything
/// the client sent, since the client cannot be trusted to say how it connected.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    tls: bool,
    host: Option<&HeaderValue>,
) {
    Forwarding::take(headers, client, tls, host.cloned()).apply(headers);
}

/// The X-Forwarded-* headers of one request (see [`set_forwarded`]), kept aside from its
/// header map: usher's HTTP/1.1 client writes them as lines after the request's own, which
/// spares three insertions (and their hashing) on every proxied request; other clients get
/// them in the map ([`Forwarding::apply`]).
#[derive(Debug, Clone)]
pub struct Forwarding {
    client: IpAddr,
    tls: bool,
    host: Option<HeaderValue>,
    /// Earlier proxies' `X-Forwarded-For` entries, each followed by `, `.
    prior: Option<Vec<u8>>,
}

impl Forwarding {
    /// Takes the client's own X-Forwarded-* headers out of `headers`, keeping its
    /// `X-Forwarded-For` entries to go on with. A request without them (the usual case) costs
    /// a look at each name.
    pub fn take(
        headers: &mut HeaderMap,
        client: IpAddr,
        tls: bool,
        host: Option<HeaderValue>,
    ) -> Forwarding {
        let mut prior = None;
        if headers
            .keys()
            .any(|k| k.as_str().starts_with("x-forwarded-"))
        {
            let mut value = Vec::new();
            for v in headers.get_all(&X_FORWARDED_FOR) {
                if let Ok(s) = v.to_str() {
                    value.extend_from_slice(s.as_bytes());
                    value.extend_from_slice(b", ");
                }
            }
            headers.remove(&X_FORWARDED_FOR);
            headers.remove(&X_FORWARDED_PROTO);
            headers.remove(&X_FORWARDED_HOST);
            prior = (!value.is_empty()).then_some(value);
        }
        Forwarding {
            client,
            tls,
            host,
            prior,
        }
    }

    fn proto(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// Appends the `X-Forwarded-For` value: earlier proxies' entries, then the client.
    fn push_for(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.prior.as_deref().unwrap_or_default());
        push_ip(out, self.client);
    }

    /// Sets them in `headers` (replacing: applying twice is applying once).
    pub fn apply(&self, headers: &mut HeaderMap) {
        let mut value = Vec::with_capacity(48);
        self.push_for(&mut value);
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
            headers.insert(X_FORWARDED_FOR, v);
        }
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(self.proto()));
        match &self.host {
            Some(h) => {
                headers.insert(X_FORWARDED_HOST, h.clone());
            }
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }

    /// Appends them as HTTP/1.1 header lines.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"x-forwarded-for: ");
        self.push_for(out);
        out.extend_from_slice(b"\r\nx-forwarded-proto: ");
        out.extend_from_slice(self.proto().as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(h) = &self.host {
            out.extend_from_slice(b"x-forwarded-host: ");
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Appends an address as text; an IPv4 one without the formatting machinery.
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // at most 15 bytes, put together here and appended at once
            let mut text = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    text[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    text[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                text[n] = b'0' + octet % 10;
                n += 1;
            }
            out.extend_from_slice(&text[..n]);
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// The host name of a `Host` value or URI authority, without port, brackets kept for IPv6.
pub fn host_without_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_map_comes_back_empty_and_only_maps_of_modest_size_are_kept() {
        // (each test runs on a thread of its own: this thread's spares start empty)
        let mut m = HeaderMap::with_capacity(8);
        m.insert(
            "x-secret",
            HeaderValue::from_static("from the last request"),
        );
        let room = m.capacity();
        recycle(m);
        let again = empty_map(4);
        assert!(again.is_empty(), "no value of the last request is left");
        assert_eq!(again.capacity(), room, "the same map, its room kept");
        // asked for more room than the spare has: a new map
        recycle(again);
        assert!(empty_map(room + 1).capacity() > room);
        // one grown past the limit is let go of
        recycle(HeaderMap::with_capacity(SPARE_MAP_LIMIT + 1));
        assert_eq!(empty_map(0).capacity(), 0);
        // and no more than SPARE_MAPS are kept
        for _ in 0..SPARE_MAPS + 4 {
            recycle(HeaderMap::with_capacity(8));
        }
        assert_eq!(SPARE.with_borrow(Vec::len), SPARE_MAPS);
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_connection_and_what_it_names() {
        let mut h = map(&[
            ("connection", "close, X-Secret"),
            ("connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "grpc-status"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
        assert_eq!(h["trailer"], "grpc-status");
    }

    #[test]
    fn forwarded_headers_append_and_replace() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
        ]);
        let host = HeaderValue::from_static("example.com");
        set_forwarded(&mut h, "192.0.2.7".parse().unwrap(), false, Some(&host));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 192.0.2.7");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
    }

    #[test]
    fn the_hop_by_hop_set_is_the_same_for_passed_lines() {
        use crate::wire::Line;
        // (a response passed on as lines is stripped by `Line::of`, not by this module)
        for name in HOP_BY_HOP
            .iter()
            .map(HeaderName::as_str)
            .chain(["proxy-authenticate"])
        {
            let line = Line::of(name.as_bytes());
            assert!(
                !matches!(
                    line,
                    Line::Other | Line::Date | Line::ContentType | Line::ContentLength
                ),
                "{name} would be passed on: {line:?}"
            );
        }
        assert_eq!(Line::of(b"trailer"), Line::Other, "end to end");
    }

    #[test]
    fn forwarding_lines_say_what_the_map_would() {
        let host = HeaderValue::from_static("example.com");
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let lines = |pairs: &[(&'static str, &'static str)], host: Option<HeaderValue>| {
            let mut h = map(pairs);
            let f = Forwarding::take(&mut h, ip, true, host);
            let mut out = Vec::new();
            f.write(&mut out);
            // the same, applied to the map (twice: once is the same)
            let mut applied = h.clone();
            f.apply(&mut applied);
            f.apply(&mut applied);
            (h, String::from_utf8(out).unwrap(), applied)
        };
        let (left, text, applied) = lines(
            &[
                ("accept", "*/*"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-for", "10.0.0.2"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "evil"),
            ],
            Some(host.clone()),
        );
        assert_eq!(left.len(), 1, "the client's own are taken out: {left:?}");
        assert_eq!(
            text,
            "x-forwarded-for: 10.0.0.1, 10.0.0.2, 192.0.2.7\r\n\
             x-forwarded-proto: https\r\nx-forwarded-host: example.com\r\n"
        );
        assert_eq!(applied["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 192.0.2.7");
        assert_eq!(applied.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(applied["x-forwarded-proto"], "https");
        assert_eq!(applied["x-forwarded-host"], "example.com");
        assert_eq!(applied.len(), 4);

        let (left, text, applied) = lines(&[("x-forwarded-host", "evil")], None);
        assert!(left.is_empty());
        assert_eq!(
            text,
            "x-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: https\r\n"
        );
        assert!(!applied.contains_key("x-forwarded-host"));
    }

    #[test]
    fn a_map_without_hop_by_hop_headers_is_left_alone() {
        let mut h = map(&[("host", "a"), ("accept", "*/*"), ("x-proxyish", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 3);
        let mut h = map(&[("connection", "keep-alive"), ("content-length", "5")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["content-length"], "5");
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.20.3.4",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "192.0.2.7",
            "::1",
            "2001:db8::7",
            "2001:db8::8:800:200c:417a",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = b"x ".to_vec();
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x {ip}").into_bytes());
        }
    }

    #[test]
    fn host_port_split() {
        assert_eq!(host_without_port("example.com:8443"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[::1]:8443"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
        assert_eq!(host_without_port("127.0.0.1:80"), "127.0.0.1");
    }
}
