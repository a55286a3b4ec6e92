//! HTTP/1.1 on the WebSocket port: request head parsing (httparse, bounded size), bodies
//! (bounded), responses, and small helpers (query strings, bearer tokens, JSON errors).
//!
//! Every response closes the connection (`Connection: close`): the HTTP API is for
//! listings, tokens and health checks, not for high request rates, and one request per
//! connection keeps the state machine small.

/// A machine-readable error code for a JSON error body (`{"error","code"}`). The
/// application's error enum implements it; the transport uses plain strings.
pub trait ErrorName {
    fn name(&self) -> &str;
}

impl ErrorName for &str {
    fn name(&self) -> &str {
        self
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// HTTP minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Path without the query string.
    pub path: String,
    pub query: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Bytes that followed the request (the first WebSocket frames of an eager client).
    pub leftover: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP, or a malformed head: 400.
    Malformed(String),
    /// Head larger than allowed: 431.
    HeadTooLarge,
    /// Body larger than allowed: 413.
    BodyTooLarge,
}

impl HeadError {
    pub fn response(&self) -> Response {
        match self {
            HeadError::Malformed(m) => Response::error(400, "BAD_REQUEST", m),
            HeadError::HeadTooLarge => {
                Response::error(431, "BAD_REQUEST", "request head too large")
            }
            HeadError::BodyTooLarge => {
                Response::error(413, "MESSAGE_TOO_LARGE", "request body too large")
            }
        }
    }
}

/// Try to parse a complete request from `buf`. `Ok(None)` = need more bytes.
pub fn parse_request(
    buf: &[u8],
    max_head: usize,
    max_body: usize,
) -> Result<Option<Request>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > max_head {
                return Err(HeadError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::HeadTooLarge),
        Err(e) => return Err(HeadError::Malformed(format!("malformed HTTP request: {e}"))),
    };
    if head_len > max_head {
        return Err(HeadError::HeadTooLarge);
    }
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.to_string(), String::new()),
    };
    let mut hs = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let v = String::from_utf8_lossy(h.value).trim().to_string();
        hs.push((h.name.to_ascii_lowercase(), v));
    }
    if hs.iter().any(|(k, _)| k == "transfer-encoding") {
        return Err(HeadError::Malformed(
            "chunked request bodies are not supported; send Content-Length".into(),
        ));
    }
    let content_length = match hs.iter().find(|(k, _)| k == "content-length") {
        None => 0,
        Some((_, v)) => v
            .parse::<usize>()
            .map_err(|_| HeadError::Malformed("bad Content-Length".into()))?,
    };
    if content_length > max_body {
        return Err(HeadError::BodyTooLarge);
    }
    if buf.len() < head_len + content_length {
        return Ok(None);
    }
    Ok(Some(Request {
        method,
        version: req.version.unwrap_or(1),
        path,
        query,
        headers: hs,
        body: buf[head_len..head_len + content_length].to_vec(),
        leftover: buf[head_len + content_length..].to_vec(),
    }))
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Does a comma-separated header contain `token` (case-insensitive)?
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(&self.query, name)
    }

    pub fn bearer(&self) -> Option<&str> {
        let v = self.header("authorization")?;
        let (scheme, rest) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim())
            .filter(|t| !t.is_empty())
    }

    pub fn is_websocket_upgrade(&self) -> bool {
        self.header_has_token("upgrade", "websocket")
    }
}

pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decoded(k) == name).then(|| percent_decode(v))
    })
}

/// `s` decoded, borrowed when there is nothing to decode (most keys): looking a parameter
/// up allocated for every key it passed.
fn decoded(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().any(|c| c == b'%' || c == b'+') {
        std::borrow::Cow::Owned(percent_decode(s))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: std::borrow::Cow<'static, str>,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Kept alive until the response is written or dropped (a download's memory permit).
    pub hold: Option<std::sync::Arc<dyn std::fmt::Debug + Send + Sync>>,
    /// Which origins a browser lets read this response (`Access-Control-Allow-Origin`).
    pub cors: Cors,
}

/// The `Access-Control-Allow-Origin` a response carries. The policy (docs/security.md):
/// answers to Bearer-authenticated requests are open to any origin — the token is not an
/// ambient credential, so a foreign page cannot send it; everything else (token minting,
/// health, metrics, the test page) is readable cross-origin only by the origins listed in
/// `server.cors_origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// `Access-Control-Allow-Origin: *`.
    Any,
    /// This one origin (with `Vary: Origin`).
    Origin(String),
    /// No CORS header: a cross-origin page cannot read the answer.
    None,
}

pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

impl Response {
    pub fn json(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: "application/json".into(),
            headers: Vec::new(),
            body: body.into_bytes(),
            hold: None,
            cors: Cors::Any,
        }
    }

    pub fn json_value(status: u16, v: &serde_json::Value) -> Response {
        Response::json(status, v.to_string())
    }

    pub fn text(
        status: u16,
        content_type: impl Into<std::borrow::Cow<'static, str>>,
        body: impl Into<Vec<u8>>,
    ) -> Response {
        Response {
            status,
            content_type: content_type.into(),
            headers: Vec::new(),
            body: body.into(),
            hold: None,
            cors: Cors::Any,
        }
    }

    pub fn error(status: u16, code: impl ErrorName, msg: &str) -> Response {
        Response::json_value(
            status,
            &serde_json::json!({ "error": msg, "code": code.name() }),
        )
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub fn with_cors(mut self, cors: Cors) -> Response {
        self.cors = cors;
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        match &self.cors {
            Cors::Any => head.push_str("Access-Control-Allow-Origin: *\r\n"),
            Cors::Origin(o) => {
                head.push_str("Access-Control-Allow-Origin: ");
                head.push_str(o);
                head.push_str("\r\nVary: Origin\r\n");
            }
            Cors::None => {}
        }
        for (k, v) in &self.headers {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// Is `key` the base64 encoding of exactly 16 bytes (24 characters ending in `==`)?
fn is_websocket_key(key: &str) -> bool {
    use base64::Engine as _;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|b| b.len() == 16)
}

/// The 101 answer to a valid WebSocket upgrade.
pub fn switching_protocols(req: &Request, subprotocol: Option<&str>) -> Result<Vec<u8>, Response> {
    if req.method != "GET" {
        return Err(
            Response::error(405, "BAD_REQUEST", "WebSocket upgrade needs GET")
                .with_header("Allow", "GET"),
        );
    }
    // RFC 6455 §4.1: the opening handshake is an HTTP/1.1 (or later) GET.
    if req.version < 1 {
        return Err(Response::error(
            400,
            "BAD_REQUEST",
            "a WebSocket upgrade needs HTTP/1.1",
        ));
    }
    if !req.header_has_token("connection", "upgrade") {
        return Err(Response::error(
            400,
            "BAD_REQUEST",
            "missing `Connection: Upgrade`",
        ));
    }
    if req.header("sec-websocket-version") != Some("13") {
        return Err(Response::error(
            426,
            "BAD_REQUEST",
            "unsupported WebSocket version (need 13)",
        )
        .with_header("Sec-WebSocket-Version", "13"));
    }
    let Some(key) = req.header("sec-websocket-key").filter(|k| !k.is_empty()) else {
        return Err(Response::error(
            400,
            "BAD_REQUEST",
            "missing Sec-WebSocket-Key",
        ));
    };
    // RFC 6455 §4.2.1 item 5: the key is 16 random bytes, base64-encoded.
    if !is_websocket_key(key) {
        return Err(Response::error(
            400,
            "BAD_REQUEST",
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ));
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut s = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = subprotocol {
        s.push_str("Sec-WebSocket-Protocol: ");
        s.push_str(p);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    Ok(s.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_with_body_and_leftover_parses() {
        let raw = b"POST /v1/token?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nAuthorization: Bearer abc\r\n\r\n{}extra";
        let r = parse_request(raw, 8192, 1024).unwrap().unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.query.as_str()),
            ("POST", "/v1/token", "x=1")
        );
        assert_eq!(r.body, b"{}");
        assert_eq!(r.leftover, b"extra");
        assert_eq!(r.bearer(), Some("abc"));
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_fail() {
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nHo", 8192, 0)
                .unwrap()
                .map(|r| r.path),
            None
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
        assert_eq!(
            parse_request(big.as_bytes(), 8192, 0).unwrap_err(),
            HeadError::HeadTooLarge
        );
        assert!(matches!(
            parse_request(b"\x16\x03\x01garbage\r\n\r\n", 8192, 0),
            Err(HeadError::Malformed(_))
        ));
        let body = b"POST / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n";
        assert_eq!(
            parse_request(body, 8192, 1000).unwrap_err(),
            HeadError::BodyTooLarge
        );
    }

    #[test]
    fn an_upgrade_with_a_pipelined_frame_is_accepted_and_the_frame_is_kept() {
        // RFC 6455's example key and accept value; then a masked text frame "hi".
        let mut raw = b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec();
        raw.extend_from_slice(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
        let req = parse_request(&raw, 8192, 0).unwrap().unwrap();
        assert!(req.is_websocket_upgrade());
        let resp =
            String::from_utf8(switching_protocols(&req, Some("confab.v1")).unwrap()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101"));
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(resp.contains("Sec-WebSocket-Protocol: confab.v1\r\n"));
        // The bytes after the head become the WebSocket's first input.
        let mut reader = crate::net::frame::Reader::default();
        let limits = crate::net::frame::Limits::new(1024, 1024);
        let mut leftover = req.leftover;
        assert_eq!(
            reader.next(&mut leftover, &limits).unwrap(),
            (8, Some(crate::net::frame::Unit::Text("hi".into())))
        );
    }

    #[test]
    fn a_bad_upgrade_is_refused_with_the_right_status() {
        let bad_version = b"GET /v1/ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: a\r\nSec-WebSocket-Version: 8\r\n\r\n";
        let req = parse_request(bad_version, 8192, 0).unwrap().unwrap();
        assert_eq!(switching_protocols(&req, None).unwrap_err().status, 426);
        let post = b"POST /v1/ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: a\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let req = parse_request(post, 8192, 0).unwrap().unwrap();
        assert_eq!(switching_protocols(&req, None).unwrap_err().status, 405);
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            query_param("a=1&room_name=My%20Room+x&t=%zz", "room_name").as_deref(),
            Some("My Room x")
        );
        assert_eq!(query_param("t=%zz", "t").as_deref(), Some("%zz"));
        assert_eq!(query_param("t=%4", "t").as_deref(), Some("%4"));
        assert_eq!(query_param("a=1", "b"), None);
        assert_eq!(
            query_param("room%5Fid=x&room_id=y", "room_id").as_deref(),
            Some("x")
        );
    }
}
