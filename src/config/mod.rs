//! Configuration: parse, then validate.
//!
//! Layers, last wins: the embedded `config/confab.toml` (which is therefore both the
//! documentation and the defaults), the file given with `--config`, then environment
//! variables `CONFAB_<SECTION>_<KEY>`. The merged TOML table is deserialised into the raw
//! structs below (`deny_unknown_fields`, so a typo is an error naming the key) and then
//! validated into [`Config`], the only type the rest of the server sees.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The documented defaults, compiled in.
pub const DEFAULT_TOML: &str = include_str!("../../config/confab.toml");

const SECTIONS: &[&str] = &[
    "server", "tls", "auth", "ws", "limits", "store", "llm", "rooms", "uploads", "compat",
    "cluster",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {msg}")]
    Syntax { path: String, msg: String },
    #[error("config: {0}")]
    Shape(String),
    #[error("config key `{key}`: {msg}")]
    Invalid { key: &'static str, msg: String },
}

fn invalid(key: &'static str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        msg: msg.into(),
    }
}

mod cluster;
mod compat;
mod load;
mod raw;

pub use cluster::ClusterConfig;
pub use compat::{CompatConfig, Profile};

// ---------------------------------------------------------------- validated

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Demo,
    OpenAi,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: Option<TlsFiles>,
    pub auth: AuthConfig,
    pub ws: WsConfig,
    pub limits: LimitsConfig,
    pub store: StoreConfig,
    pub llm: LlmConfig,
    pub rooms: RoomsConfig,
    pub uploads: UploadsConfig,
    pub compat: CompatConfig,
    /// `None`: a single box (SQLite, in-process hub).
    pub cluster: Option<ClusterConfig>,
    pub agents: BTreeMap<String, AgentConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub shards: usize,
    pub max_connections: usize,
    pub max_connections_per_user: u32,
    /// 0 = no cap.
    pub max_connections_per_ip: u32,
    pub echo_path: Option<String>,
    /// Origins (`scheme://host[:port]`) that browsers may call the unauthenticated
    /// endpoints from, cross-origin. Bearer-authenticated endpoints are open to any origin.
    pub cors_origins: Vec<String>,
    /// When set, `GET /metrics` needs `Authorization: Bearer <this>`.
    pub metrics_token: Option<String>,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub head_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub log_level: log::LevelFilter,
    pub log_format: crate::logging::Format,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub jwt_secret: Option<String>,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub public_key_file: Option<PathBuf>,
    pub private_key_file: Option<PathBuf>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub leeway_s: u64,
    pub auth_timeout: Duration,
    pub expiry_grace: Duration,
    pub token_ttl_s: u64,
    pub dev_tokens: bool,
    /// Dev tokens may carry `admin: true` (off: such a request is refused).
    pub dev_tokens_admin: bool,
}

#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Bytes one read takes from a socket (one buffer per shard).
    pub read_buffer_bytes: usize,
    pub max_message_bytes: usize,
    pub max_frame_bytes: usize,
    pub out_queue_max_bytes: usize,
    pub heartbeat_interval: Duration,
    pub pong_timeout: Duration,
    pub read_budget_messages: u32,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub rate_window: Duration,
    pub rate_max_messages: u32,
    pub rate_strikes: u32,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub db_file: String,
    pub batch_max: usize,
    pub queue: usize,
    pub read_workers: usize,
    pub read_queue: usize,
    pub idempotency_window_s: u64,
    /// Messages the single box's idempotency window holds at most (`store/idempotency.rs`).
    pub idempotency_max_entries: usize,
    pub max_page: u32,
    pub replay_max: u32,
    pub synchronous_full: bool,
    pub page_size: u32,
}

impl StoreConfig {
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join(&self.db_file)
    }
}

#[derive(Debug, Clone)]
pub struct LlmConfig {
    pub provider: ProviderKind,
    pub workers: usize,
    pub queue: usize,
    pub base_url: String,
    pub model: String,
    pub api_key_env: String,
    pub connect_timeout: Duration,
    pub first_token_timeout: Duration,
    pub read_timeout: Duration,
    /// Longest SSE line, and longest event, accepted from the backend (bytes).
    pub max_sse_line_bytes: usize,
    pub demo_tokens_per_s: f64,
    pub context_messages: u32,
    pub context_max_chars: usize,
    pub max_tokens_limit: u32,
    pub temperature_max: f64,
    pub default_agent: String,
    pub checkpoint_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct RoomsConfig {
    pub create_on_join: bool,
    pub typing_timeout: Duration,
    pub max_members: u32,
    /// Users online in a room up to which joins and leaves are announced one by one and
    /// `room_joined` lists everyone (`Hub::presence_mode`).
    pub presence_max_users: usize,
}

#[derive(Debug, Clone)]
pub struct UploadsConfig {
    pub max_file_bytes: u64,
    pub max_chunk_bytes: usize,
    /// Lower-case file name extensions accepted, without the dot.
    pub allowed_extensions: Vec<String>,
    pub max_per_connection: usize,
    pub max_active: usize,
    pub workers: usize,
    pub queue: usize,
    pub idle_timeout: Duration,
    pub download_memory_bytes: u64,
    /// Virus scanning of finished uploads (`None`: off).
    pub scan: Option<ScanConfig>,
}

/// Where clamd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddress {
    Unix(PathBuf),
    Tcp(String),
}

#[derive(Debug, Clone)]
pub struct ScanConfig {
    pub address: ClamdAddress,
    /// A scan (connect, stream, verdict) that takes longer fails.
    pub timeout: Duration,
    /// Scanner down or timed out: store the file anyway (`true`) or refuse it.
    pub accept_on_error: bool,
    /// clamd's `StreamMaxLength`: larger files are refused, never passed unscanned.
    pub stream_max_bytes: u64,
}

fn scan_config(
    mode: &str,
    address: &str,
    timeout_ms: u64,
    on_error: &str,
    stream_max: u64,
) -> Result<Option<ScanConfig>, ConfigError> {
    match mode {
        "off" => return Ok(None),
        "clamd" => {}
        other => {
            return Err(invalid(
                "uploads.virus_scan",
                format!("{other:?}: expected \"off\" or \"clamd\""),
            ))
        }
    }
    let address = if let Some(p) = address.strip_prefix("unix:") {
        ClamdAddress::Unix(PathBuf::from(p))
    } else if let Some(a) = address.strip_prefix("tcp:") {
        ClamdAddress::Tcp(a.to_string())
    } else {
        return Err(invalid(
            "uploads.clamd_address",
            format!("{address:?}: expected unix:/path or tcp:host:port"),
        ));
    };
    let accept_on_error = match on_error {
        "reject" => false,
        "accept" => true,
        other => {
            return Err(invalid(
                "uploads.on_scanner_error",
                format!("{other:?}: expected \"reject\" or \"accept\""),
            ))
        }
    };
    if stream_max == 0 {
        return Err(invalid(
            "uploads.clamd_stream_max_bytes",
            "must be at least 1",
        ));
    }
    Ok(Some(ScanConfig {
        address,
        timeout: Duration::from_millis(timeout_ms.max(100)),
        accept_on_error,
        stream_max_bytes: stream_max,
    }))
}

impl UploadsConfig {
    /// Where finished uploads live: `<data_dir>/files/<file_id>`.
    pub fn dir(store: &StoreConfig) -> PathBuf {
        store.data_dir.join("files")
    }
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub name: String,
    /// Shown to users choosing an agent (`GET /v1/agents`).
    pub description: String,
    pub provider: ProviderKind,
    pub model: String,
    pub system_prompt: String,
    pub temperature: f64,
    pub max_tokens: u32,
    pub price_prompt_per_1k: f64,
    pub price_completion_per_1k: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn out_of_range_integers_name_their_key() {
        let file = "[server]\nmax_connections = -5\n";
        let e = Config::from_layers(Some(("f.toml", file)), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.max_connections") && e.contains("negative"),
            "{e}"
        );
        let e = Config::from_layers(None, &env(&[("CONFAB_SERVER_SHARDS", "5000000000")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.shards"), "{e}");
        // Durations may exceed 32 bits.
        let cfg = Config::from_layers(
            None,
            &env(&[("CONFAB_STORE_IDEMPOTENCY_WINDOW_S", "5000000000")]),
        )
        .unwrap();
        assert_eq!(cfg.store.idempotency_window_s, 5_000_000_000);
    }

    #[test]
    fn embedded_defaults_are_valid_and_documented_values_apply() {
        let c = Config::defaults();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.store.data_dir, PathBuf::from("./data"));
        assert!(c.server.shards >= 1);
        assert_eq!(c.llm.provider, ProviderKind::Demo);
        assert!(c.tls.is_none());
    }

    #[test]
    fn environment_overrides_file_and_defaults() {
        let file = "[server]\nlisten = \"127.0.0.1:7000\"\nshards = 3\n";
        let c = Config::from_layers(
            Some(("f.toml", file)),
            &env(&[
                ("CONFAB_SERVER_LISTEN", "127.0.0.1:9000"),
                ("CONFAB_AUTH_JWT_SECRET", "12345"),
                ("CONFAB_UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.server.shards, 3);
        assert_eq!(c.auth.jwt_secret.as_deref(), Some("12345"));
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err =
            Config::from_layers(Some(("f.toml", "[server]\nlistn = \"x\"\n")), &[]).unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
        let err =
            Config::from_layers(None, &env(&[("CONFAB_WS_READ_BUFER_BYTES", "1")])).unwrap_err();
        assert!(err.to_string().contains("read_bufer_bytes"), "{err}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let err =
            Config::from_layers(None, &env(&[("CONFAB_SERVER_LISTEN", "nowhere")])).unwrap_err();
        assert!(err.to_string().contains("server.listen"), "{err}");
        let err = Config::from_layers(None, &env(&[("CONFAB_SERVER_SHARDS", "many")])).unwrap_err();
        assert!(err.to_string().contains("shards"), "{err}");
        let err = Config::from_layers(None, &env(&[("CONFAB_AUTH_ALGORITHMS", "[\"none\"]")]))
            .unwrap_err();
        assert!(err.to_string().contains("auth.algorithms"), "{err}");
    }
}
