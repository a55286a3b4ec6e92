//! Per agent and model: replies, time to first token, generation time, tokens and cost.
//! Labels are bounded: a client may name a model, so past `MAX_SERIES` pairs the rest
//! are counted under `model="other"`.

use std::fmt::Write as _;
use std::time::Duration;

use parking_lot::Mutex;

use super::hist::Histogram;
use crate::protocol::CompletionMeta;

const MAX_SERIES: usize = 64;

#[derive(Default)]
struct Series {
    replies: u64,
    errors: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_usd: f64,
    first_token: Histogram,
    duration: Histogram,
}

#[derive(Default)]
pub struct Generations {
    series: Mutex<Vec<((String, String), Series)>>,
}

/// A label value with `\`, `"` and newlines escaped.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Generations {
    /// One finished reply (`reason`: stop, length, cancelled, error).
    pub fn record(&self, m: &CompletionMeta, reason: &str) {
        let mut all = self.series.lock();
        let key = (m.agent.clone(), m.model.clone());
        let i = match all.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                let key = if all.len() < MAX_SERIES {
                    key
                } else {
                    (m.agent.clone(), "other".to_string())
                };
                match all.iter().position(|(k, _)| *k == key) {
                    Some(i) => i,
                    None => {
                        all.push((key, Series::default()));
                        all.len() - 1
                    }
                }
            }
        };
        let s = &mut all[i].1;
        s.replies += 1;
        if reason == "error" {
            s.errors += 1;
        }
        s.prompt_tokens += m.prompt_tokens;
        s.completion_tokens += m.completion_tokens;
        s.cost_usd += m.cost_usd;
        if let Some(ms) = m.first_token_ms {
            s.first_token.observe(Duration::from_millis(ms));
        }
        s.duration
            .observe(Duration::from_millis(m.response_time_ms));
    }

    pub fn render(&self, out: &mut String) {
        let all = self.series.lock();
        let families: [(&str, &str, &str); 5] = [
            (
                "confab_replies_total",
                "counter",
                "AI replies finished, by agent and model.",
            ),
            (
                "confab_reply_errors_total",
                "counter",
                "AI replies that ended in an error.",
            ),
            (
                "confab_llm_tokens_total",
                "counter",
                "Tokens, by agent, model and direction (prompt = in, completion = out).",
            ),
            (
                "confab_llm_cost_usd_total",
                "counter",
                "Cost of the replies in USD, from the agents' prices.",
            ),
            (
                "confab_time_to_first_token_seconds",
                "histogram",
                "From the start of a reply to its first token.",
            ),
        ];
        for (name, kind, help) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((agent, model), s) in all.iter() {
                let l = format!("agent=\"{}\",model=\"{}\"", esc(agent), esc(model));
                match name {
                    "confab_replies_total" => {
                        let _ = writeln!(out, "{name}{{{l}}} {}", s.replies);
                    }
                    "confab_reply_errors_total" => {
                        let _ = writeln!(out, "{name}{{{l}}} {}", s.errors);
                    }
                    "confab_llm_tokens_total" => {
                        let _ = writeln!(out, "{name}{{{l},direction=\"in\"}} {}", s.prompt_tokens);
                        let _ = writeln!(
                            out,
                            "{name}{{{l},direction=\"out\"}} {}",
                            s.completion_tokens
                        );
                    }
                    "confab_llm_cost_usd_total" => {
                        let _ = writeln!(out, "{name}{{{l}}} {}", s.cost_usd);
                    }
                    _ => s.first_token.render(out, name, &l),
                }
            }
        }
        let name = "confab_reply_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} From the start of a reply to its end.\n# TYPE {name} histogram"
        );
        for ((agent, model), s) in all.iter() {
            let l = format!("agent=\"{}\",model=\"{}\"", esc(agent), esc(model));
            s.duration.render(out, name, &l);
        }
    }
}
