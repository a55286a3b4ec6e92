//! `[cluster]`: several confab processes sharing PostgreSQL (the record) and NATS (the
//! live bus). docs/cluster.md has the design; an empty `postgres_url` is the single box.

use super::*;

/// Cluster mode's settings; `Config::cluster` is `None` on a single box.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// libpq-style connection string or URL of the shared PostgreSQL.
    pub postgres_url: String,
    /// NATS server URL (`nats://host:port`).
    pub nats_url: String,
    /// This node's name: unique in the cluster, stable across restarts.
    pub node_id: String,
    /// PostgreSQL connections for reads (history, replay, context) beside the writers'.
    pub postgres_pool: usize,
    /// Store writers (each its own connection and transaction); a conversation's writes
    /// all go to one of them.
    pub writers: usize,
    /// A node that has not renewed its lease for this long is dead: its streaming replies
    /// are ended `error` by another node.
    pub lease: Duration,
    /// How often a node renews its lease and announces itself on the bus.
    pub heartbeat: Duration,
    /// Heartbeats missed before a node's presence (its users in rooms) is dropped.
    pub down_after_beats: u32,
    /// How long an event after a gap in `seq` is held before the gap is read from
    /// PostgreSQL.
    pub reorder_hold: Duration,
    /// Events waiting for the bus thread; full: the event is dropped and repaired later.
    pub bus_queue: usize,
    /// The data dir's `files/` is one directory shared by every node (NFS, a shared
    /// volume): uploads are served. false: uploads are refused in cluster mode.
    pub shared_files: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    postgres_url: String,
    nats_url: String,
    node_id: String,
    postgres_pool: u32,
    writers: u32,
    lease_ms: u64,
    heartbeat_ms: u64,
    down_after_beats: u32,
    reorder_hold_ms: u64,
    bus_queue: u32,
    shared_files: bool,
}

impl RawCluster {
    pub(super) fn validate(self) -> Result<Option<ClusterConfig>, ConfigError> {
        if self.postgres_url.is_empty() && self.nats_url.is_empty() {
            return Ok(None);
        }
        if self.postgres_url.is_empty() || self.nats_url.is_empty() {
            return Err(invalid(
                "cluster.postgres_url",
                "cluster mode needs both cluster.postgres_url and cluster.nats_url",
            ));
        }
        if !cfg!(feature = "cluster") {
            return Err(invalid(
                "cluster.postgres_url",
                "this confab was built without cluster mode: build with `cargo build --release --features cluster`",
            ));
        }
        let node_ok = !self.node_id.is_empty()
            && self.node_id.len() <= 64
            && self
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !node_ok {
            return Err(invalid(
                "cluster.node_id",
                "required in cluster mode: 1 to 64 letters, digits, '-' or '_', unique per node",
            ));
        }
        if self.heartbeat_ms < 50 || self.lease_ms < 3 * self.heartbeat_ms {
            return Err(invalid(
                "cluster.lease_ms",
                "heartbeat_ms must be at least 50 and lease_ms at least three heartbeats",
            ));
        }
        if self.postgres_pool == 0 || self.postgres_pool > 256 || self.bus_queue == 0 {
            return Err(invalid(
                "cluster.postgres_pool",
                "postgres_pool (1 to 256) and bus_queue must be positive",
            ));
        }
        if self.writers == 0 || self.writers > 64 {
            return Err(invalid("cluster.writers", "1 to 64"));
        }
        Ok(Some(ClusterConfig {
            postgres_url: self.postgres_url,
            nats_url: self.nats_url,
            node_id: self.node_id,
            postgres_pool: self.postgres_pool as usize,
            writers: self.writers as usize,
            lease: Duration::from_millis(self.lease_ms),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            down_after_beats: self.down_after_beats.max(1),
            reorder_hold: Duration::from_millis(self.reorder_hold_ms),
            bus_queue: self.bus_queue as usize,
            shared_files: self.shared_files,
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn single_box_by_default_and_half_a_cluster_is_refused() {
        assert!(Config::defaults().cluster.is_none());
        let e = Config::from_layers(
            None,
            &env(&[("CONFAB_CLUSTER_POSTGRES_URL", "host=127.0.0.1")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("nats_url"), "{e}");
    }

    #[test]
    fn cluster_mode_needs_a_shared_secret_and_a_node_id() {
        let base = [
            ("CONFAB_CLUSTER_POSTGRES_URL", "host=127.0.0.1"),
            ("CONFAB_CLUSTER_NATS_URL", "nats://127.0.0.1:4222"),
        ];
        let e = Config::from_layers(None, &env(&base)).unwrap_err();
        if cfg!(feature = "cluster") {
            assert!(e.to_string().contains("cluster.node_id"), "{e}");
            let mut with_node = base.to_vec();
            with_node.push(("CONFAB_CLUSTER_NODE_ID", "a"));
            let e = Config::from_layers(None, &env(&with_node)).unwrap_err();
            assert!(e.to_string().contains("auth.jwt_secret"), "{e}");
            with_node.push((
                "CONFAB_AUTH_JWT_SECRET",
                "s3cret-s3cret-s3cret-s3cret-s3cret",
            ));
            let c = Config::from_layers(None, &env(&with_node)).unwrap();
            assert_eq!(c.cluster.unwrap().node_id, "a");
        } else {
            assert!(e.to_string().contains("--features cluster"), "{e}");
        }
    }
}
