//! `churn` and `resume`: blocking clients — connection churn, and resume mid-stream.

use super::*;

type Ws = tungstenite::WebSocket<TcpStream>;

fn connect_blocking(o: &Opts, path: &str) -> Result<Ws, String> {
    let sock = TcpStream::connect((o.host.as_str(), o.port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10))).ok();
    sock.set_nodelay(true).ok();
    let url = format!("ws://{}:{}{}", o.host, o.port, path);
    tungstenite::client(url, sock)
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

fn read_until(ws: &mut Ws, ty: &str) -> Result<Value, String> {
    loop {
        match ws.read().map_err(|e| e.to_string())? {
            tungstenite::Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                if v["type"] == ty {
                    return Ok(v);
                }
                if v["type"] == "error" {
                    return Err(format!("error event: {v}"));
                }
            }
            tungstenite::Message::Close(f) => return Err(format!("closed: {f:?}")),
            _ => {}
        }
    }
}

pub fn churn(o: &Opts) -> Value {
    let workers = o.connections.max(1);
    let toks = tokens(o, workers);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(hist()));
    let start = Instant::now();
    let cpu = CpuMeter::start(o.server_pid);
    std::thread::scope(|s| {
        for tok in toks.iter().take(workers) {
            let (stop, done, failed, lat) =
                (stop.clone(), done.clone(), failed.clone(), lat.clone());
            let path = ws_path(tok, "");
            s.spawn(move || {
                let mut local = hist();
                while !stop.load(Relaxed) {
                    let t = Instant::now();
                    let r = (|| -> Result<(), String> {
                        let mut ws = connect_blocking(o, &path)?;
                        read_until(&mut ws, "connected")?;
                        ws.send(tungstenite::Message::text(r#"{"type":"ping"}"#))
                            .map_err(|e| e.to_string())?;
                        read_until(&mut ws, "pong")?;
                        let _ = ws.close(None);
                        let _ = ws.flush();
                        Ok(())
                    })();
                    match r {
                        Ok(()) => {
                            done.fetch_add(1, Relaxed);
                            let _ = local.record(t.elapsed().as_micros().max(1) as u64);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Relaxed);
                        }
                    }
                }
                let _ = lat.lock().unwrap().add(&local);
            });
        }
        std::thread::sleep(o.duration);
        stop.store(true, Relaxed);
    });
    let elapsed = start.elapsed().as_secs_f64();
    let n = done.load(Relaxed);
    let lat = lat.lock().unwrap();
    json!({
        "scenario": "churn", "workers": workers, "cycles": n, "failed": failed.load(Relaxed),
        "connections_per_s": (n as f64 / elapsed).round(), "cycle_latency": pct(&lat), "server_cpu_percent": cpu.percent(),
    })
}

pub fn resume(o: &Opts) -> Value {
    let n = o.connections.max(1);
    let toks = tokens(o, n);
    let ok = AtomicU64::new(0);
    let bad = AtomicU64::new(0);
    let errors: Mutex<Vec<String>> = Mutex::default();
    let workers = n.min(64);
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= n {
                    return;
                }
                let path = ws_path(&toks[i], "");
                let r = (|| -> Result<bool, String> {
                    let mut a = connect_blocking(o, &path)?;
                    read_until(&mut a, "connected")?;
                    a.send(tungstenite::Message::text(json!({"type": "chat", "id": format!("resume-{i}-{}", now_ns()), "message": "resume test"}).to_string())).map_err(|e| e.to_string())?;
                    let conv = read_until(&mut a, "ack")?["conversation_id"].as_str().unwrap_or("").to_string();
                    for _ in 0..3 {
                        read_until(&mut a, "token")?;
                    }
                    drop(a); // drop mid-stream
                    let mut b = connect_blocking(o, &path)?;
                    read_until(&mut b, "connected")?;
                    b.send(tungstenite::Message::text(json!({"type": "subscribe", "conversation_id": conv, "after_seq": 0}).to_string())).map_err(|e| e.to_string())?;
                    let mut text = String::new();
                    let mut next_index: Option<u64> = None;
                    loop {
                        let tungstenite::Message::Text(t) = b.read().map_err(|e| e.to_string())? else { continue };
                        let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                        match v["type"].as_str().unwrap_or("") {
                            "message_added" if v["message"]["role"] == "assistant" => text = v["message"]["content"].as_str().unwrap_or("").to_string(),
                            "token" => {
                                let idx = v["index"].as_u64().unwrap_or(0);
                                if next_index.is_some_and(|n| n != idx) {
                                    return Ok(false);
                                }
                                next_index = Some(idx + v["count"].as_u64().unwrap_or(1));
                                text.push_str(v["token"].as_str().unwrap_or(""));
                            }
                            "complete" => return Ok(v["response"].as_str() == Some(text.as_str())),
                            _ => {}
                        }
                    }
                })();
                match r {
                    Ok(true) => {
                        ok.fetch_add(1, Relaxed);
                    }
                    Ok(false) => {
                        bad.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        bad.fetch_add(1, Relaxed);
                        errors.lock().unwrap().push(e);
                    }
                }
            });
        }
    });
    let errs = errors.into_inner().unwrap();
    json!({
        "scenario": "resume", "clients": n, "rebuilt_exactly": ok.load(Relaxed), "gap_or_duplicate_or_error": bad.load(Relaxed),
        "errors": errs.iter().take(5).collect::<Vec<_>>(), "elapsed_s": (start.elapsed().as_secs_f64() * 100.0).round() / 100.0,
    })
}
