//! Error codes (the `code` of an `error` event and of JSON error bodies) and the
//! WebSocket close codes the server uses.

use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    AuthRequired,
    AuthFailed,
    TokenExpired,
    Forbidden,
    BadRequest,
    EmptyMessage,
    MessageTooLarge,
    NotFound,
    RateLimit,
    Busy,
    LlmError,
    UploadTooLarge,
    UploadType,
    ChecksumMismatch,
    /// The virus scanner found something in an upload.
    UploadInfected,
    /// The virus scanner could not be asked (down, timed out) and the policy is to refuse.
    UploadScanFailed,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::AuthRequired,
        ErrorCode::AuthFailed,
        ErrorCode::TokenExpired,
        ErrorCode::Forbidden,
        ErrorCode::BadRequest,
        ErrorCode::EmptyMessage,
        ErrorCode::MessageTooLarge,
        ErrorCode::NotFound,
        ErrorCode::RateLimit,
        ErrorCode::Busy,
        ErrorCode::LlmError,
        ErrorCode::UploadTooLarge,
        ErrorCode::UploadType,
        ErrorCode::ChecksumMismatch,
        ErrorCode::UploadInfected,
        ErrorCode::UploadScanFailed,
        ErrorCode::Internal,
    ];

    /// The code a string names (`"BUSY"` → `Busy`).
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AuthRequired => "AUTH_REQUIRED",
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::TokenExpired => "TOKEN_EXPIRED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::EmptyMessage => "EMPTY_MESSAGE",
            ErrorCode::MessageTooLarge => "MESSAGE_TOO_LARGE",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::RateLimit => "RATE_LIMIT",
            ErrorCode::Busy => "BUSY",
            ErrorCode::LlmError => "LLM_ERROR",
            ErrorCode::UploadTooLarge => "UPLOAD_TOO_LARGE",
            ErrorCode::UploadType => "UPLOAD_TYPE",
            ErrorCode::ChecksumMismatch => "CHECKSUM_MISMATCH",
            ErrorCode::UploadInfected => "UPLOAD_INFECTED",
            ErrorCode::UploadScanFailed => "UPLOAD_SCAN_FAILED",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    pub fn index(self) -> usize {
        ErrorCode::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }

    /// The HTTP status that goes with this code in JSON error bodies.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::AuthRequired | ErrorCode::AuthFailed | ErrorCode::TokenExpired => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MessageTooLarge | ErrorCode::UploadTooLarge => 413,
            ErrorCode::RateLimit => 429,
            ErrorCode::Busy | ErrorCode::UploadScanFailed => 503,
            ErrorCode::UploadInfected => 422,
            ErrorCode::Internal | ErrorCode::LlmError => 500,
            _ => 400,
        }
    }
}

impl crate::net::http::ErrorName for ErrorCode {
    fn name(&self) -> &str {
        self.as_str()
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// WebSocket close codes (defined by the transport).
pub use crate::net::close;

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ErrorCode, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ErrorCode::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error code {s:?}")))
    }
}
