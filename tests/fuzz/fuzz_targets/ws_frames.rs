//! The WebSocket read path as a shard drives it: confab's own `WebSocketConfig` (limits,
//! 512-byte read buffer, masked frames required), bytes arriving in arbitrary pieces,
//! `read` until the input runs dry or the connection fails — then no more reads, as
//! `net/io.rs` does after a violation.
#![no_main]

use std::io::{self, Read, Write};

use libfuzzer_sys::fuzz_target;
use tungstenite::protocol::{Role, WebSocketContext};

/// Input delivered in chunks whose sizes come from the input itself.
struct Chunked<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.data.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.step.min(buf.len()).min(self.data.len()).max(1);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

impl Write for Chunked<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let cfg = confab::Config::defaults();
    let ws_cfg = confab::server::ws_config(&cfg, cfg.ws.max_message_bytes, cfg.ws.out_queue_max_bytes);
    let mut ctx = WebSocketContext::new(Role::Server, Some(ws_cfg));
    let mut io = Chunked {
        data: rest,
        step: usize::from(step) + 1,
    };
    for _ in 0..10_000 {
        match ctx.read(&mut io) {
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => return,
        }
    }
});
