//! The configuration as written (`Raw*`, unknown keys refused) and its validation into
//! the typed [`Config`](super::Config): every error names its key.

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    server: RawServer,
    tls: RawTls,
    auth: RawAuth,
    ws: RawWs,
    limits: RawLimits,
    store: RawStore,
    llm: RawLlm,
    rooms: RawRooms,
    uploads: RawUploads,
    compat: super::compat::RawCompat,
    cluster: super::cluster::RawCluster,
    #[serde(default)]
    agents: BTreeMap<String, RawAgent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    listen: String,
    shards: u32,
    max_connections: u32,
    max_connections_per_user: u32,
    max_connections_per_ip: u32,
    echo_path: String,
    cors_origins: Vec<String>,
    metrics_token: String,
    max_header_bytes: u32,
    max_body_bytes: u32,
    head_timeout_ms: u64,
    shutdown_timeout_ms: u64,
    log_level: String,
    log_format: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    cert_file: String,
    key_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    jwt_secret: String,
    algorithms: Vec<String>,
    public_key_file: String,
    private_key_file: String,
    audience: String,
    issuer: String,
    leeway_s: u64,
    auth_timeout_ms: u64,
    expiry_grace_s: u64,
    token_ttl_s: u64,
    dev_tokens: bool,
    dev_tokens_admin: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWs {
    read_buffer_bytes: u32,
    /// No longer used (every frame is written by the out queue since 2026-11-30);
    /// accepted so that config files naming it still load.
    #[serde(default)]
    #[allow(dead_code)]
    write_buffer_bytes: Option<u32>,
    max_message_bytes: u32,
    max_frame_bytes: u32,
    out_queue_max_bytes: u32,
    heartbeat_interval_ms: u64,
    pong_timeout_ms: u64,
    read_budget_messages: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    rate_window_ms: u64,
    rate_max_messages: u32,
    rate_strikes: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    data_dir: String,
    db_file: String,
    batch_max: u32,
    queue: u32,
    read_workers: u32,
    read_queue: u32,
    idempotency_window_s: u64,
    idempotency_max_entries: u64,
    max_page: u32,
    replay_max: u32,
    synchronous: String,
    page_size: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLlm {
    provider: String,
    workers: u32,
    queue: u32,
    base_url: String,
    model: String,
    api_key_env: String,
    connect_timeout_ms: u64,
    first_token_timeout_ms: u64,
    read_timeout_ms: u64,
    max_sse_line_bytes: u32,
    demo_tokens_per_s: f64,
    context_messages: u32,
    context_max_chars: u32,
    max_tokens_limit: u32,
    temperature_max: f64,
    default_agent: String,
    checkpoint_interval_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRooms {
    create_on_join: bool,
    typing_timeout_ms: u64,
    max_members: u32,
    presence_max_users: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUploads {
    max_file_bytes: u64,
    max_chunk_bytes: u32,
    allowed_extensions: String,
    max_per_connection: u32,
    max_active: u32,
    workers: u32,
    queue: u32,
    idle_timeout_s: u64,
    download_memory_bytes: u64,
    virus_scan: String,
    clamd_address: String,
    scan_timeout_ms: u64,
    on_scanner_error: String,
    clamd_stream_max_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    #[serde(default)]
    description: String,
    #[serde(default)]
    provider: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    system_prompt: String,
    #[serde(default = "default_temperature")]
    temperature: f64,
    #[serde(default = "default_max_tokens")]
    max_tokens: u32,
    #[serde(default)]
    price_prompt_per_1k: f64,
    #[serde(default)]
    price_completion_per_1k: f64,
}

fn default_temperature() -> f64 {
    0.7
}
fn default_max_tokens() -> u32 {
    1024
}

fn non_empty(s: String) -> Option<String> {
    if s.trim().is_empty() {
        None
    } else {
        Some(s)
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn parse_provider(key: &'static str, s: &str) -> Result<ProviderKind, ConfigError> {
    match s {
        "demo" => Ok(ProviderKind::Demo),
        "openai" => Ok(ProviderKind::OpenAi),
        other => Err(invalid(
            key,
            format!("unknown provider {other:?} (expected \"demo\" or \"openai\")"),
        )),
    }
}

impl Raw {
    pub(super) fn validate(self) -> Result<Config, ConfigError> {
        let s = self.server;
        let listen: SocketAddr = s.listen.parse().map_err(|_| {
            invalid(
                "server.listen",
                format!("{:?} is not an IP:port address", s.listen),
            )
        })?;
        let shards = if s.shards == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            s.shards as usize
        };
        if shards > 1024 {
            return Err(invalid("server.shards", "at most 1024"));
        }
        if s.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        if s.max_connections_per_user == 0 {
            return Err(invalid(
                "server.max_connections_per_user",
                "must be at least 1",
            ));
        }
        let echo_path = non_empty(s.echo_path);
        if let Some(p) = &echo_path {
            if !p.starts_with('/') {
                return Err(invalid("server.echo_path", "must start with '/'"));
            }
        }
        let mut cors_origins = Vec::with_capacity(s.cors_origins.len());
        for o in s.cors_origins {
            let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
            if !crate::net::origin::is_origin(&o) {
                return Err(invalid(
                    "server.cors_origins",
                    format!("{o:?} is not an origin: write scheme://host[:port], e.g. \"https://chat.example.com\" (no path, no wildcard)"),
                ));
            }
            cors_origins.push(o);
        }
        if s.max_header_bytes < 256 {
            return Err(invalid("server.max_header_bytes", "must be at least 256"));
        }
        let log_format = match s.log_format.as_str() {
            "text" => crate::logging::Format::Text,
            "json" => crate::logging::Format::Json,
            other => {
                return Err(invalid(
                    "server.log_format",
                    format!("{other:?}: must be \"text\" or \"json\""),
                ))
            }
        };
        let log_level = s.log_level.parse::<log::LevelFilter>().map_err(|_| {
            invalid(
                "server.log_level",
                format!("{:?} is not a log level", s.log_level),
            )
        })?;

        let tls = match (non_empty(self.tls.cert_file), non_empty(self.tls.key_file)) {
            (None, None) => None,
            (Some(c), Some(k)) => Some(TlsFiles {
                cert_file: c.into(),
                key_file: k.into(),
            }),
            _ => {
                return Err(invalid(
                    "tls.cert_file",
                    "tls.cert_file and tls.key_file must be set together",
                ))
            }
        };

        let a = self.auth;
        let mut algorithms = Vec::new();
        for name in &a.algorithms {
            let alg = match name.as_str() {
                "HS256" => jsonwebtoken::Algorithm::HS256,
                "HS384" => jsonwebtoken::Algorithm::HS384,
                "HS512" => jsonwebtoken::Algorithm::HS512,
                "RS256" => jsonwebtoken::Algorithm::RS256,
                "RS384" => jsonwebtoken::Algorithm::RS384,
                "RS512" => jsonwebtoken::Algorithm::RS512,
                "PS256" => jsonwebtoken::Algorithm::PS256,
                "ES256" => jsonwebtoken::Algorithm::ES256,
                "ES384" => jsonwebtoken::Algorithm::ES384,
                "EdDSA" => jsonwebtoken::Algorithm::EdDSA,
                other => {
                    return Err(invalid(
                        "auth.algorithms",
                        format!("unsupported algorithm {other:?}"),
                    ))
                }
            };
            algorithms.push(alg);
        }
        if algorithms.is_empty() {
            return Err(invalid("auth.algorithms", "at least one algorithm"));
        }
        let symmetric = algorithms.iter().any(|a| crate::auth::is_hmac(*a));
        let asymmetric = algorithms.iter().any(|a| !crate::auth::is_hmac(*a));
        if symmetric && asymmetric {
            return Err(invalid(
                "auth.algorithms",
                "mix HMAC (HS*) and public-key algorithms in one server is not supported",
            ));
        }
        let public_key_file = non_empty(a.public_key_file).map(PathBuf::from);
        if asymmetric && public_key_file.is_none() {
            return Err(invalid(
                "auth.public_key_file",
                "required for public-key algorithms",
            ));
        }
        if a.auth_timeout_ms == 0 {
            return Err(invalid("auth.auth_timeout_ms", "must be positive"));
        }

        let w = self.ws;
        if !(256..=16 << 20).contains(&w.read_buffer_bytes) {
            return Err(invalid(
                "ws.read_buffer_bytes",
                "must be between 256 and 16777216",
            ));
        }
        if w.max_message_bytes < 64 || w.max_frame_bytes < 64 {
            return Err(invalid(
                "ws.max_message_bytes",
                "message and frame caps must be at least 64 bytes",
            ));
        }
        if (w.out_queue_max_bytes as u64) < 2 * w.max_message_bytes as u64 {
            return Err(invalid(
                "ws.out_queue_max_bytes",
                "must be at least twice ws.max_message_bytes",
            ));
        }
        if w.heartbeat_interval_ms < 100 || w.pong_timeout_ms < 100 {
            return Err(invalid(
                "ws.heartbeat_interval_ms",
                "heartbeat and pong timeout must be at least 100 ms",
            ));
        }
        if w.read_budget_messages == 0 {
            return Err(invalid("ws.read_budget_messages", "must be at least 1"));
        }

        let l = self.limits;
        if l.rate_window_ms == 0 || l.rate_max_messages == 0 {
            return Err(invalid(
                "limits.rate_window_ms",
                "rate window and max messages must be positive",
            ));
        }

        let st = self.store;
        if st.data_dir.trim().is_empty() {
            return Err(invalid("store.data_dir", "must not be empty"));
        }
        if st.db_file.trim().is_empty() || st.db_file.contains('/') {
            return Err(invalid("store.db_file", "a plain file name"));
        }
        if st.batch_max == 0
            || st.queue == 0
            || st.read_workers == 0
            || st.read_queue == 0
            || st.max_page == 0
        {
            return Err(invalid(
                "store.queue",
                "store queue, batch, workers and page sizes must be positive",
            ));
        }

        if st.idempotency_max_entries == 0 {
            return Err(invalid("store.idempotency_max_entries", "must be positive"));
        }
        if !(512..=65536).contains(&st.page_size) || !st.page_size.is_power_of_two() {
            return Err(invalid(
                "store.page_size",
                "a power of two from 512 to 65536",
            ));
        }
        let synchronous_full = match st.synchronous.as_str() {
            "full" => true,
            "normal" => false,
            other => {
                return Err(invalid(
                    "store.synchronous",
                    format!("{other:?}: expected \"full\" or \"normal\""),
                ))
            }
        };

        let m = self.llm;
        let provider = parse_provider("llm.provider", &m.provider)?;
        if m.workers == 0 || m.workers > 65536 {
            return Err(invalid("llm.workers", "between 1 and 65536"));
        }
        if m.queue == 0 {
            return Err(invalid("llm.queue", "must be at least 1"));
        }
        if !(m.demo_tokens_per_s > 0.0 && m.demo_tokens_per_s <= 1_000_000.0) {
            return Err(invalid(
                "llm.demo_tokens_per_s",
                "between 0 (exclusive) and 1000000",
            ));
        }
        if provider == ProviderKind::OpenAi
            && !(m.base_url.starts_with("http://") || m.base_url.starts_with("https://"))
        {
            return Err(invalid(
                "llm.base_url",
                "must start with http:// or https://",
            ));
        }
        if m.temperature_max.is_nan() || m.temperature_max < 0.0 {
            return Err(invalid("llm.temperature_max", "must be >= 0"));
        }

        let mut agents = BTreeMap::new();
        for (name, ra) in self.agents {
            let provider = if ra.provider.is_empty() {
                provider
            } else {
                parse_provider("agents.*.provider", &ra.provider)?
            };
            agents.insert(
                name.clone(),
                AgentConfig {
                    name,
                    description: ra.description,
                    provider,
                    model: match (ra.model.is_empty(), provider) {
                        (false, _) => ra.model,
                        (true, ProviderKind::Demo) => "confab-demo".to_string(),
                        (true, ProviderKind::OpenAi) => m.model.clone(),
                    },
                    system_prompt: ra.system_prompt,
                    temperature: ra.temperature,
                    max_tokens: ra.max_tokens.min(m.max_tokens_limit),
                    price_prompt_per_1k: ra.price_prompt_per_1k,
                    price_completion_per_1k: ra.price_completion_per_1k,
                },
            );
        }
        if !agents.contains_key(&m.default_agent) {
            return Err(invalid(
                "llm.default_agent",
                format!("no [agents.{}] section", m.default_agent),
            ));
        }

        let u = self.uploads;
        let scan = super::scan_config(
            &u.virus_scan,
            &u.clamd_address,
            u.scan_timeout_ms,
            &u.on_scanner_error,
            u.clamd_stream_max_bytes,
        )?;
        let compat = self.compat.validate()?;
        let cluster = self.cluster.validate()?;
        if cluster.is_some() && a.jwt_secret.is_empty() && public_key_file.is_none() {
            return Err(invalid(
                "auth.jwt_secret",
                "cluster mode needs a secret (or key pair) shared by every node: a generated per-node secret would make each node refuse the others' tokens",
            ));
        }
        if u.max_file_bytes == 0 {
            return Err(invalid("uploads.max_file_bytes", "must be at least 1"));
        }
        // A chunk travels base64-encoded inside one JSON message.
        let chunk_b64 = (u.max_chunk_bytes as u64).div_ceil(3) * 4;
        if u.max_chunk_bytes == 0 || chunk_b64 + 1024 > w.max_message_bytes as u64 {
            return Err(invalid(
                "uploads.max_chunk_bytes",
                format!(
                    "must be at least 1, and its base64 form plus 1 KiB must fit ws.max_message_bytes ({}): at most {}",
                    w.max_message_bytes,
                    (w.max_message_bytes as u64).saturating_sub(1024) / 4 * 3
                ),
            ));
        }
        if u.workers == 0 || u.workers > 64 || u.queue == 0 || u.max_per_connection == 0 {
            return Err(invalid(
                "uploads.workers",
                "workers (1 to 64), queue and max_per_connection must be positive",
            ));
        }
        let allowed_extensions: Vec<String> = u
            .allowed_extensions
            .split(',')
            .map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase())
            .filter(|e| !e.is_empty())
            .collect();
        if allowed_extensions.iter().any(|e| {
            !e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'*')
                || (e.contains('*') && e != "*")
        }) {
            return Err(invalid(
                "uploads.allowed_extensions",
                "comma-separated extensions of letters and digits, or \"*\" for any",
            ));
        }

        let r = self.rooms;
        Ok(Config {
            server: ServerConfig {
                listen,
                shards,
                max_connections: s.max_connections as usize,
                max_connections_per_user: s.max_connections_per_user,
                max_connections_per_ip: s.max_connections_per_ip,
                echo_path,
                cors_origins,
                metrics_token: non_empty(s.metrics_token),
                max_header_bytes: s.max_header_bytes as usize,
                max_body_bytes: s.max_body_bytes as usize,
                head_timeout: ms(s.head_timeout_ms.max(1)),
                shutdown_timeout: ms(s.shutdown_timeout_ms),
                log_level,
                log_format,
            },
            tls,
            auth: AuthConfig {
                jwt_secret: non_empty(a.jwt_secret),
                algorithms,
                public_key_file,
                private_key_file: non_empty(a.private_key_file).map(PathBuf::from),
                audience: non_empty(a.audience),
                issuer: non_empty(a.issuer),
                leeway_s: a.leeway_s,
                auth_timeout: ms(a.auth_timeout_ms),
                expiry_grace: Duration::from_secs(a.expiry_grace_s),
                token_ttl_s: a.token_ttl_s.max(1),
                dev_tokens: a.dev_tokens,
                dev_tokens_admin: a.dev_tokens_admin,
            },
            ws: WsConfig {
                read_buffer_bytes: w.read_buffer_bytes as usize,
                max_message_bytes: w.max_message_bytes as usize,
                max_frame_bytes: w.max_frame_bytes as usize,
                out_queue_max_bytes: w.out_queue_max_bytes as usize,
                heartbeat_interval: ms(w.heartbeat_interval_ms),
                pong_timeout: ms(w.pong_timeout_ms),
                read_budget_messages: w.read_budget_messages,
            },
            limits: LimitsConfig {
                rate_window: ms(l.rate_window_ms),
                rate_max_messages: l.rate_max_messages,
                rate_strikes: l.rate_strikes.max(1),
            },
            store: StoreConfig {
                data_dir: PathBuf::from(st.data_dir),
                db_file: st.db_file,
                batch_max: st.batch_max as usize,
                queue: st.queue as usize,
                read_workers: st.read_workers as usize,
                read_queue: st.read_queue as usize,
                idempotency_window_s: st.idempotency_window_s,
                idempotency_max_entries: usize::try_from(st.idempotency_max_entries)
                    .unwrap_or(usize::MAX),
                max_page: st.max_page,
                replay_max: st.replay_max.max(1),
                synchronous_full,
                page_size: st.page_size,
            },
            llm: LlmConfig {
                provider,
                workers: m.workers as usize,
                queue: m.queue as usize,
                base_url: m.base_url.trim_end_matches('/').to_string(),
                model: m.model,
                api_key_env: m.api_key_env,
                connect_timeout: ms(m.connect_timeout_ms.max(1)),
                first_token_timeout: ms(m.first_token_timeout_ms.max(1)),
                read_timeout: ms(m.read_timeout_ms.max(1)),
                max_sse_line_bytes: (m.max_sse_line_bytes as usize).max(1024),
                demo_tokens_per_s: m.demo_tokens_per_s,
                context_messages: m.context_messages,
                context_max_chars: m.context_max_chars as usize,
                max_tokens_limit: m.max_tokens_limit,
                temperature_max: m.temperature_max,
                default_agent: m.default_agent,
                checkpoint_interval: ms(m.checkpoint_interval_ms.max(10)),
            },
            rooms: RoomsConfig {
                create_on_join: r.create_on_join,
                typing_timeout: ms(r.typing_timeout_ms.max(100)),
                max_members: r.max_members.max(1),
                presence_max_users: r.presence_max_users.max(1) as usize,
            },
            uploads: UploadsConfig {
                max_file_bytes: u.max_file_bytes,
                max_chunk_bytes: u.max_chunk_bytes as usize,
                allowed_extensions,
                max_per_connection: u.max_per_connection as usize,
                max_active: u.max_active.max(1) as usize,
                workers: u.workers as usize,
                queue: u.queue as usize,
                idle_timeout: Duration::from_secs(u.idle_timeout_s.max(1)),
                download_memory_bytes: u.download_memory_bytes,
                scan,
            },
            compat,
            cluster,
            agents,
        })
    }
}
