//! Incremental parser for OpenAI-style Server-Sent Events streams of
//! `chat.completion.chunk` objects.
//!
//! Fed one line at a time (without the line ending). `data:` lines of one event are joined
//! with `\n`; a blank line ends the event. Comments (`:`) and other fields (`event:`,
//! `id:`, `retry:`) are ignored. `data: [DONE]` ends the stream.

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// What one complete event said.
#[derive(Debug, Clone, PartialEq)]
pub enum SseEvent {
    /// A content delta (possibly with a finish reason on the same chunk).
    Chunk {
        content: Option<String>,
        finish_reason: Option<String>,
        usage: Option<Usage>,
    },
    Done,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SseError {
    #[error("malformed chunk from the model backend: {0}")]
    Malformed(String),
    #[error("the model backend reported an error: {0}")]
    Backend(String),
}

#[derive(Deserialize)]
struct RawChunk {
    #[serde(default)]
    choices: Vec<RawChoice>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawChoice {
    #[serde(default)]
    delta: Option<RawDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct RawDelta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct RawUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

pub struct SseParser {
    data: String,
    has_data: bool,
    /// Longest event (its `data:` lines joined) accepted.
    max_event: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new(1 << 20)
    }
}

impl SseParser {
    pub fn new(max_event: usize) -> SseParser {
        SseParser {
            data: String::new(),
            has_data: false,
            max_event,
        }
    }

    /// Feed one line; returns an event when the line completed one.
    pub fn line(&mut self, line: &str) -> Result<Option<SseEvent>, SseError> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field == "data" {
            if self.data.len() + value.len() + 1 > self.max_event {
                self.data = String::new();
                self.has_data = false;
                return Err(SseError::Malformed(format!(
                    "an event of the stream is over {} bytes (llm.max_sse_line_bytes)",
                    self.max_event
                )));
            }
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(value);
            self.has_data = true;
            // Most backends send one data line per event; `[DONE]` may lack the blank line.
            if value == "[DONE]" {
                return self.dispatch();
            }
        }
        Ok(None)
    }

    /// End of input: an event without its trailing blank line still counts.
    pub fn finish(&mut self) -> Result<Option<SseEvent>, SseError> {
        self.dispatch()
    }

    fn dispatch(&mut self) -> Result<Option<SseEvent>, SseError> {
        if !self.has_data {
            return Ok(None);
        }
        self.has_data = false;
        let data = std::mem::take(&mut self.data);
        parse_data(&data).map(Some)
    }
}

pub fn parse_data(data: &str) -> Result<SseEvent, SseError> {
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(SseEvent::Done);
    }
    let raw: RawChunk = serde_json::from_str(data).map_err(|e| {
        let shown: String = data.chars().take(120).collect();
        SseError::Malformed(format!("{e} in {shown:?}"))
    })?;
    if let Some(err) = raw.error {
        let msg = err
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| err.to_string());
        return Err(SseError::Backend(msg));
    }
    let (content, finish_reason) = match raw.choices.into_iter().next() {
        Some(c) => (c.delta.and_then(|d| d.content), c.finish_reason),
        None => (None, None),
    };
    let usage = raw.usage.map(|u| Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
    });
    Ok(SseEvent::Chunk {
        content,
        finish_reason,
        usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_over_the_cap_is_an_error_not_a_buffer() {
        let mut p = SseParser::new(100);
        let line = format!("data: {}", "x".repeat(60));
        assert!(p.line(&line).unwrap().is_none());
        assert!(matches!(p.line(&line), Err(SseError::Malformed(_))));
    }

    #[test]
    fn an_openai_stream_parses_into_deltas_finish_usage_and_done() {
        let stream = [
            r#"data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            "",
            ": keep-alive",
            r#"data: {"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
            "",
            r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            "",
            r#"data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#,
            "",
            "data: [DONE]",
        ];
        let mut p = SseParser::default();
        let evs: Vec<SseEvent> = stream.iter().filter_map(|l| p.line(l).unwrap()).collect();
        assert_eq!(evs.len(), 5);
        assert_eq!(
            evs[1],
            SseEvent::Chunk {
                content: Some("Hel".into()),
                finish_reason: None,
                usage: None
            }
        );
        assert_eq!(
            evs[2],
            SseEvent::Chunk {
                content: None,
                finish_reason: Some("stop".into()),
                usage: None
            }
        );
        assert_eq!(
            evs[3],
            SseEvent::Chunk {
                content: None,
                finish_reason: None,
                usage: Some(Usage {
                    prompt_tokens: 9,
                    completion_tokens: 2
                })
            }
        );
        assert_eq!(evs[4], SseEvent::Done);
    }

    #[test]
    fn garbage_and_backend_errors_are_errors() {
        let mut p = SseParser::default();
        assert!(matches!(p.line("data: {not json"), Ok(None)));
        assert!(matches!(p.line(""), Err(SseError::Malformed(_))));
        let e = parse_data(r#"{"error":{"message":"quota exceeded","type":"x"}}"#).unwrap_err();
        assert_eq!(e, SseError::Backend("quota exceeded".into()));
    }

    #[test]
    fn multi_line_data_is_joined_and_crlf_tolerated() {
        let mut p = SseParser::default();
        assert_eq!(p.line("data: {\"choices\":\r").unwrap(), None);
        assert_eq!(
            p.line("data: [{\"delta\":{\"content\":\"a\"}}]}").unwrap(),
            None
        );
        let ev = p.line("\r").unwrap().unwrap();
        assert_eq!(
            ev,
            SseEvent::Chunk {
                content: Some("a".into()),
                finish_reason: None,
                usage: None
            }
        );
    }
}
