//! The seed dialects: an upgrade path through the router, and a text frame through each
//! dialect's decoder (000 agixt, 001 ws_chat, 002 edagent, 003 progress, 004 rooms).
#![no_main]

use std::sync::OnceLock;

use confab::config::Profile;
use confab::dialect::{route, Dialect, Route};
use libfuzzer_sys::fuzz_target;

fn cfg() -> &'static confab::Config {
    static C: OnceLock<confab::Config> = OnceLock::new();
    C.get_or_init(confab::Config::defaults)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = route(text, cfg());
    let mut dec = confab::protocol::Decoder::default();
    for profile in Profile::ALL {
        let r = Route {
            profile,
            path_user: Some("alice".into()),
            bound: Some("c_1".into()),
        };
        let mut d = Dialect::new(&r, cfg());
        let _ = d.inbound(&mut dec, text);
        // Aliases learned from earlier frames change later decoding: twice.
        d.learn(text, "c_2");
        let _ = d.inbound(&mut dec, text);
    }
});
