//! The embedded demo model: offline and deterministic. It says what it is, reflects the
//! user's message, and streams word by word at `llm.demo_tokens_per_s`, so the server can
//! be tried and load-tested with no key and no network.

use std::time::{Duration, Instant};

use super::{LlmError, ModelRequest, Provider, StreamEnd, Usage};

pub struct Demo {
    interval: Duration,
}

impl Demo {
    pub fn new(tokens_per_s: f64) -> Demo {
        Demo {
            interval: Duration::from_secs_f64(1.0 / tokens_per_s),
        }
    }
}

/// The reply the demo model gives to `user_text` (deterministic).
pub fn reply(user_text: &str, turns: usize) -> String {
    let said: String = user_text.split_whitespace().collect::<Vec<_>>().join(" ");
    let said: String = if said.chars().count() > 200 {
        said.chars().take(200).collect::<String>() + "…"
    } else {
        said
    };
    let words = said.split_whitespace().count();
    format!(
        "Hello! I am confab's built-in demo model: no AI backend is configured, so I answer offline. \
         You said: \"{said}\" ({words} words; messages in this conversation so far: {turns}). \
         Every word of this reply reaches you as a separate token event over the WebSocket, \
         and the whole reply is saved in SQLite. Press Stop to cancel me mid-sentence, or reload \
         the page while I am talking to see the conversation resume where it was. \
         To talk to a real model, set llm.provider = \"openai\" and llm.base_url in config/confab.toml."
    )
}

/// Split into word tokens, each keeping its leading space (as model tokens do).
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        if ch == ' ' && !cur.is_empty() && !cur.ends_with(' ') {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(ch);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

impl Provider for Demo {
    fn stream(
        &self,
        req: &ModelRequest,
        sink: &mut dyn FnMut(&str) -> bool,
    ) -> Result<StreamEnd, LlmError> {
        let last_user = req
            .messages
            .iter()
            .rev()
            .find(|(r, _)| r == "user")
            .map(|(_, c)| c.as_str())
            .unwrap_or("");
        let turns = req.messages.iter().filter(|(r, _)| r != "system").count();
        let toks = tokens(&reply(last_user, turns));
        let prompt_tokens = req
            .messages
            .iter()
            .map(|(_, c)| c.len() as u64)
            .sum::<u64>()
            .div_ceil(4);
        let limit = req.max_tokens.max(1) as usize;
        let start = Instant::now();
        let mut sent = 0u64;
        for (i, t) in toks.iter().enumerate() {
            if i >= limit {
                return Ok(StreamEnd {
                    finish_reason: "length".into(),
                    usage: Some(Usage {
                        prompt_tokens,
                        completion_tokens: sent,
                    }),
                });
            }
            // Paced against the start time, so the rate holds whatever the sink costs.
            let due = start + self.interval * i as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if req.cancel.load(std::sync::atomic::Ordering::Relaxed) || !sink(t) {
                return Ok(StreamEnd {
                    finish_reason: "cancelled".into(),
                    usage: Some(Usage {
                        prompt_tokens,
                        completion_tokens: sent,
                    }),
                });
            }
            sent += 1;
        }
        Ok(StreamEnd {
            finish_reason: "stop".into(),
            usage: Some(Usage {
                prompt_tokens,
                completion_tokens: sent,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_rejoin_to_the_reply() {
        let r = reply("what is  this?", 1);
        assert_eq!(tokens(&r).concat(), r);
        assert!(r.contains("demo model") && r.contains("\"what is this?\""));
    }
}
