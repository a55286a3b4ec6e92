//! The harness's reader of server frames: bytes read into one buffer per thread, frames
//! parsed in place, a connection keeping bytes of its own only while a frame is cut.
//!
//! tungstenite's reader zeroes up to `read_buffer_size` bytes of the connection's own
//! buffer before every read (`BytesMut::resize`); with 5,000 connections those buffers are
//! cold, and at 500k deliveries a second that zeroing was a fifth of the harness's core
//! (perf), on the core the load generator shares with nothing but itself. A harness that
//! saturates on its own bookkeeping measures itself, so reads go through here; writes
//! (masked client frames) still go through tungstenite.

/// What a server sent, as far as the scenarios care.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Text(&'a str),
    Ping(&'a [u8]),
    /// The close code, when the frame has one.
    Close(Option<u16>),
    /// Binary, pong, or a fragment of a message still incomplete.
    Other,
}

/// Why the connection is unusable.
#[derive(Debug, PartialEq, Eq)]
pub enum Bad {
    Utf8,
    TooLong,
    Protocol(&'static str),
}

/// One connection's parse state between reads.
#[derive(Default)]
pub struct Reader {
    /// Bytes of a frame cut by the end of a read.
    partial: Vec<u8>,
    /// A fragmented text message so far (servers seldom fragment; kept for correctness).
    message: Vec<u8>,
    in_text: bool,
}

const MAX_MESSAGE: usize = 16 << 20;

impl Reader {
    /// Parse the frames in `data` (just read), calling `each` per frame in order.
    pub fn feed(&mut self, data: &[u8], mut each: impl FnMut(Frame<'_>)) -> Result<(), Bad> {
        if self.partial.is_empty() {
            let used = self.parse(data, &mut each)?;
            self.partial.extend_from_slice(&data[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(data);
            let used = self.parse(&buf, &mut each)?;
            buf.drain(..used);
            self.partial = buf;
        }
        if self.partial.len() > MAX_MESSAGE + 14 {
            return Err(Bad::TooLong);
        }
        Ok(())
    }

    /// Parse whole frames from the front of `data`; returns the bytes consumed.
    fn parse(&mut self, data: &[u8], each: &mut impl FnMut(Frame<'_>)) -> Result<usize, Bad> {
        let mut at = 0;
        while let Some((fin, opcode, start, len)) = header(&data[at..])? {
            let end = start + len;
            if data.len() - at < end {
                break;
            }
            let payload = &data[at + start..at + end];
            at += end;
            self.frame(fin, opcode, payload, each)?;
        }
        Ok(at)
    }

    fn frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: &[u8],
        each: &mut impl FnMut(Frame<'_>),
    ) -> Result<(), Bad> {
        match opcode {
            0x1 if fin && !self.in_text => each(Frame::Text(
                std::str::from_utf8(payload).map_err(|_| Bad::Utf8)?,
            )),
            0x1 => {
                self.in_text = true;
                self.message.clear();
                self.message.extend_from_slice(payload);
                each(Frame::Other);
            }
            0x0 if self.in_text => {
                if self.message.len() + payload.len() > MAX_MESSAGE {
                    return Err(Bad::TooLong);
                }
                self.message.extend_from_slice(payload);
                if fin {
                    self.in_text = false;
                    let text = std::str::from_utf8(&self.message).map_err(|_| Bad::Utf8)?;
                    each(Frame::Text(text));
                } else {
                    each(Frame::Other);
                }
            }
            0x8 => each(Frame::Close(
                payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])),
            )),
            0x9 => each(Frame::Ping(payload)),
            0x0 | 0x2 | 0xA => each(Frame::Other),
            _ => return Err(Bad::Protocol("reserved opcode")),
        }
        Ok(())
    }
}

/// A frame header at the front of `b`: (fin, opcode, header length, payload length), or
/// `None` while the header itself is incomplete.
fn header(b: &[u8]) -> Result<Option<(bool, u8, usize, usize)>, Bad> {
    if b.len() < 2 {
        return Ok(None);
    }
    if b[1] & 0x80 != 0 {
        return Err(Bad::Protocol("a masked frame from the server"));
    }
    let (len, start) = match b[1] & 0x7F {
        126 if b.len() < 4 => return Ok(None),
        126 => (u16::from_be_bytes([b[2], b[3]]) as u64, 4),
        127 if b.len() < 10 => return Ok(None),
        127 => (
            u64::from_be_bytes(b[2..10].try_into().unwrap_or([0xFF; 8])),
            10,
        ),
        n => (n as u64, 2),
    };
    if len > MAX_MESSAGE as u64 {
        return Err(Bad::TooLong);
    }
    Ok(Some((b[0] & 0x80 != 0, b[0] & 0x0F, start, len as usize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => v.push(n as u8),
            n if n < 65536 => {
                v.push(126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(payload);
        v
    }

    fn collect(r: &mut Reader, data: &[u8], out: &mut Vec<String>) -> Result<(), Bad> {
        r.feed(data, |f| {
            out.push(match f {
                Frame::Text(t) => format!("text:{t}"),
                Frame::Ping(p) => format!("ping:{}", p.len()),
                Frame::Close(code) => format!("close:{code:?}"),
                Frame::Other => "other".into(),
            })
        })
    }

    #[test]
    fn every_cut_of_a_stream_gives_the_same_frames() {
        let big = "x".repeat(300);
        let huge = "y".repeat(70_000);
        let mut stream = frame(true, 1, b"hello");
        stream.extend(frame(true, 9, b"pp"));
        stream.extend(frame(true, 1, big.as_bytes()));
        stream.extend(frame(false, 1, "h\u{e9}".as_bytes()));
        stream.extend(frame(true, 0, b"llo"));
        stream.extend(frame(true, 1, huge.as_bytes()));
        stream.extend(frame(true, 8, &[0x03, 0xE8]));
        let want = vec![
            "text:hello".to_string(),
            "ping:2".into(),
            format!("text:{big}"),
            "other".into(),
            "text:h\u{e9}llo".into(),
            format!("text:{huge}"),
            "close:Some(1000)".into(),
        ];
        for cut in (0..stream.len())
            .step_by(7)
            .chain([1, 2, 3, stream.len() - 1])
        {
            let mut r = Reader::default();
            let mut out = Vec::new();
            collect(&mut r, &stream[..cut], &mut out).unwrap();
            collect(&mut r, &stream[cut..], &mut out).unwrap();
            assert_eq!(out, want, "cut at {cut}");
        }
        // Byte by byte.
        let mut r = Reader::default();
        let mut out = Vec::new();
        for b in &stream {
            collect(&mut r, std::slice::from_ref(b), &mut out).unwrap();
        }
        assert_eq!(out, want);
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let mut out = Vec::new();
        let masked = [0x81, 0x81, 1, 2, 3, 4, b'a'];
        assert!(collect(&mut Reader::default(), &masked, &mut out).is_err());
        let bad_utf8 = frame(true, 1, &[0xFF, 0xFE]);
        assert_eq!(
            collect(&mut Reader::default(), &bad_utf8, &mut out),
            Err(Bad::Utf8)
        );
        let reserved = frame(true, 3, b"");
        assert!(collect(&mut Reader::default(), &reserved, &mut out).is_err());
        let mut too_long = vec![0x81, 127];
        too_long.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            collect(&mut Reader::default(), &too_long, &mut out),
            Err(Bad::TooLong)
        );
    }
}
