//! `upload`: chunked file uploads — throughput and back-pressure.

use super::*;

/// The file every connection uploads, and its base64 chunks for one chunk size.
struct UploadFile {
    data: Arc<Vec<u8>>,
    sha256: String,
    chunks: Option<(usize, Arc<Vec<String>>)>,
}

impl UploadFile {
    fn chunks(&mut self, size: usize) -> Arc<Vec<String>> {
        use base64::Engine;
        match &self.chunks {
            Some((s, c)) if *s == size => c.clone(),
            _ => {
                let c: Arc<Vec<String>> = Arc::new(
                    self.data
                        .chunks(size.max(1))
                        .map(|c| base64::engine::general_purpose::STANDARD.encode(c))
                        .collect(),
                );
                self.chunks = Some((size, c.clone()));
                c
            }
        }
    }
}

/// One connection's upload in progress: file id, next chunk, the chunks, when it started.
type UploadState = (String, usize, Arc<Vec<String>>, Instant);

struct UploadH {
    file: UploadFile,
    state: HashMap<usize, UploadState>,
    lat: Histogram<u64>,
    done: u64,
    bytes: u64,
    errors: u64,
    failed: u64,
    first_error: Option<String>,
    measure_from: Instant,
}

impl UploadH {
    fn start(&mut self, id: usize, out: &mut Vec<String>) {
        out.push(
            json!({"type": "file_upload", "upload_type": "init", "file_name": "load.zip",
                   "file_size": self.file.data.len(), "mime_type": "application/octet-stream"})
            .to_string(),
        );
        self.state.remove(&id);
    }

    fn chunk(&mut self, id: usize, out: &mut Vec<String>) {
        let Some((fid, next, chunks, _)) = self.state.get_mut(&id) else {
            return;
        };
        if *next < chunks.len() {
            out.push(format!(
                r#"{{"type":"file_upload","upload_type":"chunk","file_id":"{fid}","chunk_index":{next},"total_chunks":{},"chunk_data":"{}"}}"#,
                chunks.len(),
                chunks[*next]
            ));
            *next += 1;
        } else {
            out.push(
                json!({"type": "file_upload", "upload_type": "finalize", "file_id": fid,
                       "checksum": self.file.sha256})
                .to_string(),
            );
        }
    }
}

impl Handler for UploadH {
    fn on_open(&mut self, _id: usize, _out: &mut Vec<String>, _now: Instant) {}
    fn on_text(&mut self, id: usize, text: &str, out: &mut Vec<String>, now: Instant) {
        if text.contains("\"type\":\"connected\"") {
            return self.start(id, out);
        }
        if text.contains("\"type\":\"error\"") {
            self.errors += 1;
            if self.first_error.is_none() {
                self.first_error = Some(text.chars().take(200).collect());
            }
            return self.start(id, out);
        }
        if !text.contains("\"type\":\"file_upload\"") {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return;
        };
        match v["upload_type"].as_str() {
            Some("init") => {
                let size = v["max_chunk_bytes"].as_u64().unwrap_or(1) as usize;
                let chunks = self.file.chunks(size);
                let fid = v["file_id"].as_str().unwrap_or("").to_string();
                self.state.insert(id, (fid, 0, chunks, now));
                self.chunk(id, out);
            }
            Some("chunk") => self.chunk(id, out),
            Some("complete") => {
                if let Some((_, _, _, started)) = self.state.get(&id) {
                    if now >= self.measure_from {
                        let _ = self
                            .lat
                            .record(now.duration_since(*started).as_micros().max(1) as u64);
                        self.done += 1;
                        self.bytes += v["size"].as_u64().unwrap_or(0);
                    }
                }
                self.start(id, out);
            }
            _ => {}
        }
    }
    fn on_failed(&mut self, _id: usize, _why: &str) {
        self.failed += 1;
    }
}

/// `upload`: N connections, each uploading a `--size`-byte file (default 1 MiB) over and
/// over: init, chunks in order (each answered before the next), finalize with the
/// SHA-256. Uploads/s, MB/s and the time per upload (init sent → complete received).
pub fn upload(o: &Opts) -> Value {
    use sha2::Digest;
    let n = o.connections;
    let size = if o.size == 32 { 1 << 20 } else { o.size };
    let mut x: u32 = 0x9e37_79b9;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let sha256: String = sha2::Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let data = Arc::new(data);
    let toks = tokens(o, n);
    let paths: Vec<String> = toks.iter().map(|t| ws_path(t, "")).collect();
    let warm = Duration::from_secs(1);
    let start = Instant::now();
    let cpu = CpuMeter::start(o.server_pid);
    let hs = run_threads(
        o,
        paths,
        |_| UploadH {
            file: UploadFile {
                data: data.clone(),
                sha256: sha256.clone(),
                chunks: None,
            },
            state: HashMap::new(),
            lat: hist(),
            done: 0,
            bytes: 0,
            errors: 0,
            failed: 0,
            first_error: None,
            measure_from: start + warm,
        },
        start + warm + o.duration,
        None,
        0.0,
    );
    let secs = o.duration.as_secs_f64();
    let done: u64 = hs.iter().map(|h| h.done).sum();
    let bytes: u64 = hs.iter().map(|h| h.bytes).sum();
    let errors: u64 = hs.iter().map(|h| h.errors).sum();
    let failed: u64 = hs.iter().map(|h| h.failed).sum();
    let first_error = hs.iter().find_map(|h| h.first_error.clone());
    json!({
        "scenario": "upload", "connections": n, "file_bytes": size, "duration_s": secs,
        "uploads": done, "uploads_per_s": (done as f64 / secs * 10.0).round() / 10.0,
        "mb_per_s": (bytes as f64 / secs / 1e6 * 10.0).round() / 10.0,
        "errors": errors, "first_error": first_error, "failed_connections": failed,
        "upload_time": pct(&merge(hs.into_iter().map(|h| h.lat))), "server_cpu_percent": cpu.percent(),
    })
}
