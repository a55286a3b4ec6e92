//! The native decoder: a text frame (simd-json) into a typed client message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let mut d = confab::protocol::Decoder::default();
        let _ = d.decode(text);
        // The decoder's buffers are reused across frames on a shard: decode twice.
        let _ = d.decode(text);
    }
});
