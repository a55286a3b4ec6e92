//! The model backend's SSE stream, fed line by line as the OpenAI provider does.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut p = confab::llm::sse::SseParser::new(4096);
    for line in text.split('\n') {
        let _ = p.line(line);
    }
    let _ = p.finish();
});
