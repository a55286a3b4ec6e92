//! Who is asking, as far as HTTP can tell: `Origin` and `Host` values, and whether they
//! name this machine. Used by the CORS policy and the dev-token guard (docs/security.md).
//!
//! A browser sends `Origin` on every cross-origin request and on same-origin POSTs, and
//! a page cannot forge it; `Host` is what the browser resolved the name *from*, so a
//! DNS-rebinding page (evil.example resolving to 127.0.0.1) still sends `Host:
//! evil.example`. Together they keep a foreign web page from using loopback-only
//! endpoints through the user's browser. Neither says anything about a non-browser
//! client on this machine, which may send what it likes — loopback is the trust boundary.

use std::net::IpAddr;

/// Is `host` (a `Host` header value or the host part of a URL, with or without a port)
/// a name for this machine: `localhost`, `*.localhost`, a 127.0.0.0/8 address or `[::1]`?
pub fn is_loopback_host(host: &str) -> bool {
    let name = strip_port(host);
    if name.eq_ignore_ascii_case("localhost") || name.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `host[:port]` → `host`, for names, IPv4 and bracketed IPv6 (`[::1]:8080` → `[::1]`).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The host part of a serialized origin `scheme://host[:port]`, if it is one.
fn origin_host(origin: &str) -> Option<&str> {
    let (scheme, rest) = origin.split_once("://")?;
    if !matches!(scheme, "http" | "https")
        || rest.is_empty()
        || rest.contains(['/', '?', '#', '@', ' '])
    {
        return None;
    }
    Some(rest)
}

/// Is `o` a serialized origin (`http(s)://host[:port]`, no path)? `null` is not.
pub fn is_origin(o: &str) -> bool {
    origin_host(o).is_some_and(|h| !strip_port(h).is_empty())
}

/// Is `origin` a page served from this machine (`http://localhost:3000`,
/// `http://127.0.0.1:8080`, `https://[::1]`)? `null` (sandboxed frames, `file:`) is not.
pub fn is_loopback_origin(origin: &str) -> bool {
    origin_host(origin).is_some_and(is_loopback_host)
}

/// Is `origin` one of the configured `server.cors_origins` (already lower case)?
pub fn is_listed(origin: &str, listed: &[String]) -> bool {
    let o = origin.trim_end_matches('/');
    listed.iter().any(|l| l.eq_ignore_ascii_case(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_with_and_without_ports() {
        for h in [
            "localhost",
            "LOCALHOST:8080",
            "app.localhost:3000",
            "127.0.0.1",
            "127.8.9.10:1",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:80",
            "[::2]:80",
            "",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn loopback_origins_only_with_a_scheme_and_no_path() {
        assert!(is_loopback_origin("http://127.0.0.1:8080"));
        assert!(is_loopback_origin("https://localhost"));
        assert!(is_loopback_origin("http://[::1]:9000"));
        assert!(!is_loopback_origin("null"));
        assert!(!is_loopback_origin("http://evil.example"));
        assert!(!is_loopback_origin("http://127.0.0.1@evil.example"));
        assert!(!is_loopback_origin("file://"));
        assert!(!is_loopback_origin("ftp://127.0.0.1"));
        assert!(is_origin("https://chat.example.com"));
        assert!(is_origin("http://chat.example.com:8443"));
        assert!(!is_origin("*"));
        assert!(!is_origin("https://chat.example.com/app"));
        assert!(!is_origin("chat.example.com"));
    }

    #[test]
    fn listed_origins_match_case_insensitively() {
        let listed = vec!["https://chat.example.com".to_string()];
        assert!(is_listed("https://Chat.Example.com", &listed));
        assert!(!is_listed("https://chat.example.com.evil", &listed));
    }
}
