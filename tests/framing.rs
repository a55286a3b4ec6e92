//! WebSocket framing over a raw socket (RFC 6455 §5.2): a 64-bit payload length with its
//! most significant bit set is a protocol error (1002); a message sent in endless
//! continuation frames is closed (1009) instead of being read forever; frames cut at any
//! byte arrive whole, with control frames between fragments; a client's close is answered.
// In a test a panic is a failed test: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;

/// An upgraded raw socket on `/v1/ws` (authenticated), past the 101 and `connected`.
fn raw_ws(s: &TestServer, user: &str) -> TcpStream {
    let mut sock = TcpStream::connect(s.addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let req = format!(
        "GET /v1/ws?token={} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        s.token(user)
    );
    sock.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(sock.read(&mut b).unwrap(), 1);
        got.push(b[0]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"));
    sock
}

/// A masked client frame (mask 0: the payload is sent as is).
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    assert!(payload.len() < 126);
    f.push(0x80 | payload.len() as u8);
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Read server frames until a close frame; its code.
fn close_code(sock: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // Parse what we have: unmasked server frames.
        let mut i = 0;
        while i + 2 <= buf.len() {
            let op = buf[i] & 0x0f;
            let mut len = (buf[i + 1] & 0x7f) as usize;
            let mut h = 2;
            if len == 126 {
                if i + 4 > buf.len() {
                    break;
                }
                len = u16::from_be_bytes([buf[i + 2], buf[i + 3]]) as usize;
                h = 4;
            }
            if i + h + len > buf.len() {
                break;
            }
            if op == 0x8 {
                return u16::from_be_bytes([buf[i + h], buf[i + h + 1]]);
            }
            i += h + len;
        }
        let n = match sock.read(&mut chunk) {
            Ok(0) => panic!("closed without a close frame"),
            Ok(n) => n,
            Err(e) => panic!("no close frame: {e}"),
        };
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn a_64_bit_length_with_the_top_bit_set_is_closed_1002() {
    let s = TestServer::start("frame-topbit", |_| {});
    let mut sock = raw_ws(&s, "alice");
    let mut f = vec![0x81, 0x80 | 127];
    f.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]);
    sock.write_all(&f).unwrap();
    assert_eq!(close_code(&mut sock), 1002);
    // An honest length over the limit is still 1009.
    let mut sock = raw_ws(&s, "bob");
    let mut f = vec![0x81, 0x80 | 127];
    f.extend_from_slice(&(1u64 << 40).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]);
    sock.write_all(&f).unwrap();
    assert_eq!(close_code(&mut sock), 1009);
}

#[test]
fn endless_empty_continuation_frames_are_closed_1009() {
    let s = TestServer::start("frame-fragments", |_| {});
    let mut sock = raw_ws(&s, "alice");
    // A text message that never ends: 1 byte, then empty continuations.
    sock.write_all(&frame(false, 0x1, b"{")).unwrap();
    let empty = frame(false, 0x0, b"");
    let burst: Vec<u8> = empty
        .iter()
        .copied()
        .cycle()
        .take(empty.len() * 10_000)
        .collect();
    let mut code = None;
    sock.set_read_timeout(Some(std::time::Duration::from_millis(1)))
        .unwrap();
    for _ in 0..100 {
        // The server closes long before a million frames; stop writing when it has.
        if sock.write_all(&burst).is_err() {
            break;
        }
        let mut b = [0u8; 64];
        if let Ok(n) = sock.read(&mut b) {
            if n >= 4 && b[0] == 0x88 {
                code = Some(u16::from_be_bytes([b[2], b[3]]));
                break;
            }
        }
    }
    let code = code.unwrap_or_else(|| {
        sock.set_read_timeout(Some(WAIT)).unwrap();
        close_code(&mut sock)
    });
    assert_eq!(code, 1009);

    // A message in a reasonable number of fragments is fine.
    let mut sock = raw_ws(&s, "bob");
    let msg = br#"{"type":"ping","id":"frag"}"#;
    let (first, rest) = msg.split_at(1);
    let mut out = frame(false, 0x1, first);
    for (i, b) in rest.iter().enumerate() {
        out.extend(frame(i == rest.len() - 1, 0x0, &[*b]));
    }
    sock.write_all(&out).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"frag\"") {
        let n = sock.read(&mut b).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&b[..n]);
    }
}

/// Read until `needle` has arrived (server frames, unparsed).
fn read_until(sock: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !got.windows(needle.len()).any(|w| w == needle) {
        let n = sock.read(&mut b).unwrap();
        assert!(n > 0, "closed before {:?}", String::from_utf8_lossy(needle));
        got.extend_from_slice(&b[..n]);
    }
    got
}

/// The shard's own frame reader: frames cut at every byte across TCP writes, a ping in
/// the middle of a fragmented message (answered with a pong carrying its payload), and
/// the client's close answered with its own code before the server closes TCP.
#[test]
fn frames_cut_anywhere_arrive_and_a_client_close_is_answered_then_tcp_closes() {
    let s = TestServer::start("frame-cuts", |_| {});
    let mut sock = raw_ws(&s, "alice");
    sock.set_nodelay(true).unwrap();
    read_until(&mut sock, b"\"connected\"");
    let msg = br#"{"type":"ping","id":"cut"}"#;
    let (a, b) = msg.split_at(10);
    let mut out = frame(false, 0x1, a);
    out.extend(frame(true, 0x9, b"are you there"));
    out.extend(frame(true, 0x0, b));
    for byte in &out {
        sock.write_all(&[*byte]).unwrap();
    }
    let got = read_until(&mut sock, b"\"cut\"");
    // The pong (opcode 0xA) with the ping's payload came before the answer.
    let pong = [&[0x8A, 13][..], b"are you there"].concat();
    let at = got.windows(pong.len()).position(|w| w == pong.as_slice());
    assert!(at.is_some(), "no pong in {got:?}");
    // The client closes with 4001: the server answers 4001, then closes TCP.
    sock.write_all(&frame(true, 0x8, &4001u16.to_be_bytes()))
        .unwrap();
    assert_eq!(close_code(&mut sock), 4001);
    let mut rest = [0u8; 64];
    assert_eq!(sock.read(&mut rest).unwrap(), 0, "TCP closed by the server");
}

/// More messages in one TCP write than the read budget lets a connection have per turn:
/// the rest waits in the connection's reader for the next turn (`read_later`) and every
/// message is answered, in order — including one cut across the budget's boundary.
#[test]
fn input_beyond_the_read_budget_is_kept_for_the_next_turn_in_order() {
    let s = TestServer::start("frame-budget", |c| c.ws.read_budget_messages = 2);
    let mut sock = raw_ws(&s, "alice");
    sock.set_nodelay(true).unwrap();
    read_until(&mut sock, b"\"connected\"");
    let mut out = Vec::new();
    for i in 0..40 {
        let msg = format!(r#"{{"type":"ping","id":"b{i:02}"}}"#);
        if i == 39 {
            // The last one fragmented: its first half also waits with the rest.
            let (a, b) = msg.as_bytes().split_at(8);
            out.extend(frame(false, 0x1, a));
            out.extend(frame(true, 0x0, b));
        } else {
            out.extend(frame(true, 0x1, msg.as_bytes()));
        }
    }
    sock.write_all(&out).unwrap();
    let got = read_until(&mut sock, b"\"b39\"");
    let text = String::from_utf8_lossy(&got);
    let order: Vec<usize> = (0..40)
        .map(|i| {
            text.find(&format!("\"b{i:02}\""))
                .expect("every ping answered")
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "answered in order");
}
