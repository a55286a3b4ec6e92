//! Storage (placeholder until the store lands).
use std::sync::Arc;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::ServerCtx;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Other(String),
}
impl StoreError {
    pub fn is_config(&self) -> bool { false }
}
pub struct Store;
impl Store {
    pub fn open(_cfg: &Config, _m: Arc<Metrics>) -> Result<Store, StoreError> { Ok(Store) }
    pub fn shutdown(&self) {}
}
pub fn start_threads(_ctx: &Arc<ServerCtx>) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> { Ok(Vec::new()) }
