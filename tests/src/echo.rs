//! A tiny HTTP/1.1 echo application on `127.0.0.1:0`, the workload behind a sidecar in the
//! end-to-end tests. It answers every request with JSON: its id, the method, path, headers
//! (names in lower case) and body it received (`/bytes/N` answers N bytes of filler instead, for
//! benchmarks). Switches make it fail the next N requests with
//! 503 or answer slowly. Plain tokio, no HTTP library: it only has to speak what the sidecar
//! sends (Content-Length or chunked bodies, keep-alive).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

struct Switches {
    fail_next: AtomicU64,
    delay_ms: AtomicU64,
    requests: AtomicU64,
    /// Connections open now, the most open at once, and all accepted.
    open: AtomicU64,
    peak: AtomicU64,
    accepted: AtomicU64,
    /// While true, every request received waits (counted, unanswered) until it turns false.
    hold: tokio::sync::watch::Sender<bool>,
}

impl Default for Switches {
    fn default() -> Self {
        Self {
            fail_next: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            open: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            hold: tokio::sync::watch::channel(false).0,
        }
    }
}

pub struct EchoApp {
    pub id: String,
    pub addr: SocketAddr,
    switches: Arc<Switches>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoApp {
    /// Starts an echo app that calls itself `id`.
    pub async fn start(id: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let switches = Arc::new(Switches::default());
        let (sw, name) = (switches.clone(), id.to_string());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (sw, name) = (sw.clone(), name.clone());
                tokio::spawn(async move {
                    sw.accepted.fetch_add(1, Ordering::SeqCst);
                    let now = sw.open.fetch_add(1, Ordering::SeqCst) + 1;
                    sw.peak.fetch_max(now, Ordering::SeqCst);
                    let _ = serve(tcp, &name, &sw).await;
                    sw.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Self {
            id: id.to_string(),
            addr,
            switches,
            task,
        })
    }

    /// The next `n` requests get a 503.
    pub fn fail_next(&self, n: u64) {
        self.switches.fail_next.store(n, Ordering::SeqCst);
    }

    /// Every answer waits this long first.
    pub fn set_delay(&self, delay: Duration) {
        self.switches
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Connections open to the app now.
    pub fn open_connections(&self) -> u64 {
        self.switches.open.load(Ordering::SeqCst)
    }

    /// The most connections that were open to the app at once.
    pub fn peak_connections(&self) -> u64 {
        self.switches.peak.load(Ordering::SeqCst)
    }

    /// While `on`, requests are received (and counted) but not answered; turning it off
    /// answers every held request. A test holds a request in flight this way for exactly as
    /// long as it needs, instead of for a fixed delay.
    pub fn hold(&self, on: bool) {
        self.switches.hold.send_replace(on);
    }

    /// Requests received so far (answered or failed).
    pub fn requests(&self) -> u64 {
        self.switches.requests.load(Ordering::SeqCst)
    }
}

impl Drop for EchoApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(tcp: TcpStream, id: &str, sw: &Switches) -> std::io::Result<()> {
    let (read, mut write) = tcp.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = BTreeMap::<String, String>::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                let v = v.trim().to_string();
                headers
                    .entry(k)
                    .and_modify(|old| {
                        old.push(',');
                        old.push_str(&v);
                    })
                    .or_insert(v);
            }
        }
        let mut body = Vec::new();
        if headers
            .get("transfer-encoding")
            .is_some_and(|t| t.contains("chunked"))
        {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).await?;
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                    .unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                reader.read_exact(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = headers
            .get("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            body = vec![0; n];
            reader.read_exact(&mut body).await?;
        }
        sw.requests.fetch_add(1, Ordering::SeqCst);
        let mut hold = sw.hold.subscribe();
        let _ = hold.wait_for(|held| !held).await;
        let delay = sw.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let fail = sw
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let (status, reason) = if fail {
            (503, "Service Unavailable")
        } else {
            (200, "OK")
        };
        let close = headers
            .get("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        // `/bytes/N`: N bytes of filler instead of the echo (the benchmarks' fixed-size answer).
        if let Some(n) = path
            .strip_prefix("/bytes/")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n <= 1 << 20)
        {
            let head = format!(
                "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {n}\r\n\r\n"
            );
            let mut response = head.into_bytes();
            response.resize(response.len() + n, b'x');
            write.write_all(&response).await?;
            continue;
        }
        let json = serde_json::json!({
            "id": id,
            "method": method,
            "path": path,
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
            "failed": fail,
        })
        .to_string();
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{json}",
            json.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        write.write_all(response.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}
