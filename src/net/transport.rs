//! One byte stream over plain TCP or rustls, so everything above it is the same code.
//!
//! Both are nonblocking: `read`/`write` return `WouldBlock` when the socket would block.
//! For TLS, reading also drives the handshake and flushes whatever rustls wants to send
//! (handshake records, alerts), and a full rustls send buffer is reported as `WouldBlock`
//! rather than `Ok(0)` (tungstenite would read a 0-byte write as a reset).

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

pub struct TlsStream {
    pub sock: TcpStream,
    pub tls: rustls::ServerConnection,
    /// The peer closed TCP (or sent close_notify); no more plaintext will come.
    eof: bool,
}

impl Transport {
    pub fn tls(sock: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<Transport> {
        let tls = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Transport::Tls(Box::new(TlsStream {
            sock,
            tls,
            eof: false,
        })))
    }

    pub fn socket(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &t.sock,
        }
    }

    pub fn socket_mut(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &mut t.sock,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Push out buffered TLS records. Plain TCP has nothing buffered here.
    pub fn flush_pending(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            Transport::Tls(t) => t.flush_tls(),
        }
    }

    /// Best-effort TLS close_notify (ignored for plain TCP).
    pub fn send_close_notify(&mut self) {
        if let Transport::Tls(t) = self {
            t.tls.send_close_notify();
            let _ = t.flush_tls();
        }
    }
}

impl TlsStream {
    fn flush_tls(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer dropped TCP without close_notify: an ordinary disconnect.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.eof {
                return Ok(0);
            }
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            let processed = self.tls.process_new_packets();
            // Whatever happened, rustls may have records to send (handshake, alert).
            match self.flush_tls() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = processed {
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    /// WouldBlock only when the socket itself refused bytes: that is what raises the
    /// (edge-triggered) writable event the shard waits for. rustls's send buffer being
    /// full is not: its records are written out and the write tried again (answering
    /// WouldBlock there, with a socket that had room, waited for an event that never came
    /// — the rest of a large frame sat until the next heartbeat).
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        for _ in 0..4 {
            let n = self.tls.writer().write_vectored(bufs)?;
            let socket_blocked = match self.flush_tls() {
                Ok(()) => false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
                Err(e) => return Err(e),
            };
            if n > 0 || bufs.iter().all(|b| b.is_empty()) {
                return Ok(n);
            }
            if socket_blocked {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            // rustls's buffer was full and the socket took all of it: room now.
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_tls()
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(t) => t.write(buf),
        }
    }

    /// One `sendmsg` on plain TCP (not `writev`: the socket call skips the file layer's
    /// `vfs_writev`/`fdget_pos`, ~5% of a fan-out's CPU, BENCHMARKS.md); TLS takes the
    /// slices into its records.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => {
                socket2::SockRef::from(&*s).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)
            }
            Transport::Tls(t) => t.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(t) => t.flush(),
        }
    }
}

/// Build the rustls server config from PEM files (TLS 1.2 and 1.3, aws-lc-rs provider).
pub fn load_tls_config(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs_pem = std::fs::read(cert_file)
        .map_err(|e| format!("tls.cert_file {}: {e}", cert_file.display()))?;
    let key_pem =
        std::fs::read(key_file).map_err(|e| format!("tls.key_file {}: {e}", key_file.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &certs_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert_file {}: no certificate found",
            cert_file.display()
        ));
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| format!("tls.key_file {}: {e}", key_file.display()))?
        .ok_or_else(|| format!("tls.key_file {}: no private key found", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: {e}"))?;
    Ok(Arc::new(cfg))
}
