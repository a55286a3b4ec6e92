//! The shard's frame reader (`net::frame::Reader`) as `net/io.rs` drives it: confab's
//! default limits, bytes arriving in pieces of fuzzed size, `next` until a piece is used
//! up, no more input after a violation. The oracle: the same bytes in one piece decode to
//! the same units, or fail with the same violation — where a frame is cut must not matter.
#![no_main]

use confab::net::frame::{Limits, Reader, Unit, Violation};
use libfuzzer_sys::fuzz_target;

/// Everything `input` decodes to, fed in pieces of `step` bytes.
fn decode(input: &[u8], step: usize, limits: &Limits) -> (Vec<Unit>, Option<Violation>) {
    let mut r = Reader::default();
    let mut out = Vec::new();
    for piece in input.chunks(step) {
        let mut piece = piece.to_vec();
        let mut pos = 0;
        while pos < piece.len() {
            match r.next(&mut piece[pos..], limits) {
                Ok((used, unit)) => {
                    assert!(used > 0, "no progress on a non-empty input");
                    pos += used;
                    out.extend(unit);
                }
                Err(v) => return (out, Some(v)),
            }
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    // Small limits too, so that the size checks are reached by short inputs.
    let limits = if step & 0x80 == 0 {
        Limits {
            max_frame: 65536,
            max_message: 65536,
        }
    } else {
        Limits {
            max_frame: 100,
            max_message: 300,
        }
    };
    let whole = decode(rest, rest.len().max(1), &limits);
    let cut = decode(rest, usize::from(step & 0x7f) + 1, &limits);
    assert_eq!(whole, cut);
});
