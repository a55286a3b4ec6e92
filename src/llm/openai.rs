//! Any OpenAI-compatible `POST {base_url}/chat/completions` with `stream: true`
//! (OpenAI, vLLM, Ollama, llama.cpp server, LiteLLM), read with ureq on the worker thread.
//!
//! Timeouts: `llm.connect_timeout_ms` to connect; `llm.first_token_timeout_ms` for the
//! response head and, checked after every read, for the first content delta;
//! `llm.read_timeout_ms` for each read of the body (a stalled stream fails, a long one
//! does not). Cancellation drops the body reader, which closes the backend connection.

use std::io::{BufRead, BufReader, Read};
use std::time::Instant;

use serde_json::json;

use super::sse::{SseError, SseEvent, SseParser};
use super::{LlmError, ModelRequest, Provider, StreamEnd};
use crate::config::LlmConfig;

/// Requests made for one reply at most (the first plus retries of 429 / 503).
const MAX_ATTEMPTS: u32 = 4;

pub struct OpenAi {
    agent: ureq::Agent,
    url: String,
    api_key_env: String,
    first_token_timeout: std::time::Duration,
    max_line: usize,
}

impl OpenAi {
    pub fn new(cfg: &LlmConfig) -> OpenAi {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(cfg.connect_timeout))
            .timeout_recv_response(Some(cfg.first_token_timeout))
            .timeout_per_read(Some(cfg.read_timeout))
            .timeout_send_body(Some(cfg.connect_timeout))
            .build();
        OpenAi {
            agent: ureq::Agent::new_with_config(config),
            url: format!("{}/chat/completions", cfg.base_url),
            api_key_env: cfg.api_key_env.clone(),
            first_token_timeout: cfg.first_token_timeout,
            max_line: cfg.max_sse_line_bytes,
        }
    }
}

fn classify(e: ureq::Error) -> LlmError {
    match e {
        ureq::Error::Timeout(t) => LlmError::Timeout(t.to_string()),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            LlmError::Connect(io.to_string())
        }
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
            LlmError::Connect(e.to_string())
        }
        ureq::Error::Io(io) => LlmError::Connect(io.to_string()),
        other => LlmError::Connect(other.to_string()),
    }
}

fn io_error(e: std::io::Error) -> LlmError {
    let text = e.to_string();
    if e.kind() == std::io::ErrorKind::TimedOut
        || text.to_ascii_lowercase().contains("timeout")
        || text.contains("timed out")
    {
        LlmError::Timeout(text)
    } else {
        LlmError::Io(text)
    }
}

impl Provider for OpenAi {
    fn stream(
        &self,
        req: &ModelRequest,
        sink: &mut dyn FnMut(&str) -> bool,
    ) -> Result<StreamEnd, LlmError> {
        let messages: Vec<serde_json::Value> = req
            .messages
            .iter()
            .map(|(r, c)| json!({"role": r, "content": c}))
            .collect();
        let body = json!({
            "model": req.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": req.temperature,
            "max_tokens": req.max_tokens,
        })
        .to_string();
        let started = Instant::now();
        // 429 / 503 arrive before any token: retried with backoff (honouring
        // Retry-After) while the first-token budget lasts, at most MAX_ATTEMPTS times.
        // Once the body streams, nothing is retried: the client has seen tokens.
        let mut attempt = 0u32;
        let resp = loop {
            attempt += 1;
            let mut request = self
                .agent
                .post(&self.url)
                .header("Accept", "text/event-stream")
                .content_type("application/json");
            if let Ok(key) = std::env::var(&self.api_key_env) {
                if !key.is_empty() {
                    request = request.header("Authorization", format!("Bearer {key}"));
                }
            }
            let resp = request.send(body.as_bytes()).map_err(classify)?;
            let status = resp.status().as_u16();
            if status < 400 {
                break resp;
            }
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(std::time::Duration::from_secs_f64);
            let text = resp
                .into_body()
                .with_config()
                .limit(64 * 1024)
                .read_to_string()
                .unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| {
                    v.pointer("/error/message")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                })
                .unwrap_or_else(|| text.chars().take(300).collect());
            let backoff = retry_after.unwrap_or(std::time::Duration::from_millis(
                250 << (attempt - 1).min(4),
            ));
            let retryable = matches!(status, 429 | 503)
                && attempt < MAX_ATTEMPTS
                && started.elapsed() + backoff < self.first_token_timeout
                && !req.cancel.load(std::sync::atomic::Ordering::Relaxed);
            if !retryable {
                return Err(LlmError::Http { status, message });
            }
            log::info!(
                "model backend answered {status}; retrying in {backoff:?} (attempt {attempt})"
            );
            std::thread::sleep(backoff);
        };
        let mut reader = BufReader::with_capacity(8192, resp.into_body().into_reader());
        let mut parser = SseParser::new(self.max_line);
        let mut line = String::new();
        let mut finish_reason: Option<String> = None;
        let mut usage = None;
        let mut got_token = false;
        loop {
            if req.cancel.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(StreamEnd {
                    finish_reason: "cancelled".into(),
                    usage,
                });
            }
            line.clear();
            // Bounded: a backend that never ends a line must not fill memory.
            let n = (&mut reader)
                .take(self.max_line as u64 + 1)
                .read_line(&mut line)
                .map_err(io_error)?;
            if n > self.max_line && !line.ends_with('\n') {
                return Err(SseError::Malformed(format!(
                    "a line of the event stream is over {} bytes (llm.max_sse_line_bytes)",
                    self.max_line
                ))
                .into());
            }
            let event = if n == 0 {
                match parser.finish()? {
                    Some(ev) => Some(ev),
                    None => {
                        // EOF without [DONE]: fine if the backend said why it stopped.
                        return match finish_reason {
                            Some(r) => Ok(StreamEnd {
                                finish_reason: r,
                                usage,
                            }),
                            None => Err(LlmError::Truncated),
                        };
                    }
                }
            } else {
                parser.line(line.trim_end_matches('\n'))?
            };
            if !got_token && started.elapsed() > self.first_token_timeout {
                return Err(LlmError::Timeout(format!(
                    "no token within {:?}",
                    self.first_token_timeout
                )));
            }
            match event {
                None => {}
                Some(SseEvent::Done) => {
                    return Ok(StreamEnd {
                        finish_reason: finish_reason.unwrap_or_else(|| "stop".into()),
                        usage,
                    });
                }
                Some(SseEvent::Chunk {
                    content,
                    finish_reason: fr,
                    usage: u,
                }) => {
                    if let Some(c) = content {
                        if !c.is_empty() {
                            got_token = true;
                            if !sink(&c) {
                                return Ok(StreamEnd {
                                    finish_reason: "cancelled".into(),
                                    usage,
                                });
                            }
                        }
                    }
                    if fr.is_some() {
                        finish_reason = fr;
                    }
                    if u.is_some() {
                        usage = u;
                    }
                }
            }
            if n == 0 {
                return match finish_reason {
                    Some(r) => Ok(StreamEnd {
                        finish_reason: r,
                        usage,
                    }),
                    None => Err(LlmError::Truncated),
                };
            }
        }
    }
}
