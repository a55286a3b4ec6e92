//! Config loading: a TOML file over the embedded defaults (type check, validation).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = confab::Config::from_layers(Some(("fuzz.toml", text)), &[]);
    }
});
