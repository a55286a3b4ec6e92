//! The HTTP head parser and what the router asks of a parsed request.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(req)) = confab::net::http::parse_request(data, 8192, 1 << 20) {
        let _ = confab::net::http::switching_protocols(&req, Some("confab.v1"));
        let _ = req.query_param("token");
        let _ = req.bearer();
        let _ = req.header_has_token("connection", "upgrade");
        let _ = confab::net::http::percent_decode(&req.path);
        if let Some(host) = req.header("host") {
            let _ = confab::net::origin::is_loopback_host(host);
        }
        if let Some(o) = req.header("origin") {
            let _ = confab::net::origin::is_loopback_origin(o);
        }
    }
});
