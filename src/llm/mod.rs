//! Generation (placeholder until the LLM pool lands).
use std::sync::Arc;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::ServerCtx;
pub struct Llm;
impl Llm {
    pub fn new(_cfg: &Config, _m: Arc<Metrics>) -> Llm { Llm }
    pub fn shutdown(&self, _ctx: &ServerCtx) {}
}
pub fn start_workers(_ctx: &Arc<ServerCtx>) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> { Ok(Vec::new()) }
