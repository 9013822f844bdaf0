//! Peers this project did not write, for the data-plane tests: curl, Python scripts (`h2`,
//! `websockets`), Envoy with a mesh certificate, and raw sockets. A missing tool fails the test
//! with a message naming what to install; nothing is skipped.

use crate::meshd::Meshd;
use crate::process::Process;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a tool printed, and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `program args` under `timeout` (a test never hangs on an outside tool), off the test's
/// runtime thread so that apps on that runtime keep answering. Panics when the program cannot
/// be started at all, naming it.
pub async fn run(program: &str, args: Vec<String>, limit: Duration) -> Output {
    let program = program.to_string();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("timeout")
            .arg(limit.as_secs().max(1).to_string())
            .arg(&program)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} (under timeout): {e}"));
        let out = Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        // `timeout` answers 127 when the program is not installed.
        assert!(
            out.code != Some(127),
            "{program} is not installed (needed by this test): {}",
            out.stderr
        );
        out
    })
    .await
    .unwrap_or_else(|e| panic!("tool task: {e}"))
}

/// curl with these arguments (`-sS` added), within 60 s.
pub async fn curl(args: &[&str]) -> Output {
    let mut all = vec!["-sS".to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    run("curl", all, Duration::from_secs(60)).await
}

/// Runs a Python 3 script (`python3 -c`) with arguments, within `limit`. The modules it needs
/// are checked first: a missing one fails the test with the `pip install` that fixes it.
pub async fn python(modules: &[&str], script: &str, args: &[String], limit: Duration) -> Output {
    for m in modules {
        let check = run(
            "python3",
            vec!["-c".into(), format!("import {m}")],
            Duration::from_secs(30),
        )
        .await;
        assert!(
            check.ok(),
            "the Python module {m} is missing (pip install {m}): {}",
            check.stderr
        );
    }
    let mut all = vec!["-c".to_string(), script.to_string()];
    all.extend(args.iter().cloned());
    run("python3", all, limit).await
}

/// Envoy as a mesh client: a plain HTTP listener on loopback whose every request goes over
/// mTLS + HTTP/2 (ALPN h2) to `upstream` (a sidecar's inbound listener), presenting a
/// certificate meshd issued for `identity`.
pub struct Envoy {
    pub process: Process,
    pub listen: SocketAddr,
}

impl Envoy {
    pub async fn mesh_client(
        meshd: &Meshd,
        dir: &Path,
        identity: &str,
        upstream: SocketAddr,
    ) -> anyhow::Result<Self> {
        use crate::dataplane::{envoy_binary, envoy_config, free_port, start_envoy, tls_socket};
        let envoy = envoy_binary()?;
        std::fs::create_dir_all(dir)?;
        let (cert, key) = crate::proxy::issue_cert(meshd, identity, &dir.join("cert")).await;
        let bundle = meshd.data_dir.join("ca-bundle.pem");
        let port = free_port()?;
        anyhow::ensure!(
            upstream.ip().is_loopback() && upstream.is_ipv4(),
            "Envoy's test config dials 127.0.0.1, not {upstream}"
        );
        let config = envoy_config(
            port,
            upstream.port(),
            None,
            Some(tls_socket("UpstreamTlsContext", &cert, &key, &bundle, "")),
        );
        let process = start_envoy(&envoy, dir, "envoy-client", &config, 1)?;
        Ok(Self {
            process,
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }
}

/// Writes `request` to `addr` as it is, then reads until the peer closes or `limit` passes;
/// returns what came back (lossy UTF-8).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> String {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    if s.write_all(request).await.is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// The status code of the first HTTP/1.1 response in `text` (0 when there is none).
pub fn status_of(text: &str) -> u16 {
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The value of counter/gauge lines of `name` with all of `labels` in `/metrics` text, summed.
pub fn metric(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split(['{', ' '])
                .next()
                .is_some_and(|n| n == name || n == format!("{name}_total"))
        })
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A Python client of a sidecar's inbound listener with a mesh certificate, trying what slow,
/// silent and idle clients do; prints JSON `{case: seconds until the server closed, or null}`.
/// Arguments: host port cert key ca-bundle case...
pub const PY_INBOUND_TIMEOUTS: &str = r#"
import json, socket, ssl, sys, time
import h2.config, h2.connection, h2.events
host, port, cert, key, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
cases = sys.argv[6:]

def tls(alpn):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols([alpn])
    s = ctx.wrap_socket(socket.create_connection((host, port), timeout=15))
    assert s.selected_alpn_protocol() == alpn, s.selected_alpn_protocol()
    return s

def closed_after(s, start, trickle=None, limit=15.0):
    s.settimeout(0.3)
    while time.monotonic() - start < limit:
        try:
            if not s.recv(65536):
                return time.monotonic() - start
        except socket.timeout:
            pass
        except OSError:
            return time.monotonic() - start
        if trickle is not None:
            try:
                s.sendall(trickle)
            except OSError:
                return time.monotonic() - start
    return None

def h2conn(s):
    c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    s.sendall(c.data_to_send())
    return c

out = {}
for case in cases:
    start = time.monotonic()
    if case == "silent-tls":
        out[case] = closed_after(tls("http/1.1"), start)
    elif case == "partial-h1":
        s = tls("http/1.1")
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: b\r\n")
        out[case] = closed_after(s, start, trickle=b"X-Slow: 1\r\n")
    elif case == "h2-no-preface":
        out[case] = closed_after(tls("h2"), start)
    elif case == "h2-no-request":
        s = tls("h2")
        h2conn(s)
        out[case] = closed_after(s, start)
    elif case == "h2-idle":
        s = tls("h2")
        c = h2conn(s)
        c.send_headers(1, [(":method", "GET"), (":path", "/idle"), (":authority", "b"), (":scheme", "https")], end_stream=True)
        s.sendall(c.data_to_send())
        status, done = None, False
        while not done:
            data = s.recv(65536)
            if not data:
                break
            for e in c.receive_data(data):
                if isinstance(e, h2.events.ResponseReceived):
                    status = dict(e.headers).get(b":status")
                if isinstance(e, h2.events.StreamEnded):
                    done = True
            s.sendall(c.data_to_send())
        assert status == b"200", status
        out[case] = closed_after(s, time.monotonic())
print(json.dumps(out))
"#;

/// One HTTP/2 request with Python's `h2` over mesh mTLS: prints JSON `{status, body}`.
/// Arguments: host port cert key ca-bundle path, then header pairs `name=value` (pseudo-headers
/// included, in order).
pub const PY_H2_REQUEST: &str = r#"
import json, socket, ssl, sys
import h2.config, h2.connection, h2.events
host, port, cert, key, ca, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
headers = [tuple(h.split("=", 1)) for h in sys.argv[7:]]
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["h2"])
s = ctx.wrap_socket(socket.create_connection((host, port), timeout=20))
c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False))
c.initiate_connection()
c.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":path", path)] + headers, end_stream=True)
s.sendall(c.data_to_send())
status, body, done = None, b"", False
while not done:
    data = s.recv(65536)
    if not data:
        break
    for e in c.receive_data(data):
        if isinstance(e, h2.events.ResponseReceived):
            status = int(dict(e.headers)[b":status"])
        elif isinstance(e, h2.events.DataReceived):
            body += e.data
            c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        elif isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)):
            done = True
    s.sendall(c.data_to_send())
print(json.dumps({"status": status, "body": body.decode("utf-8", "replace")}))
"#;

/// A WebSocket echo server (Python `websockets`) on 127.0.0.1, for the upgrade tests: prints
/// `listening <port>`, then answers each message `m` with `<x-mesh-peer-identity>|m`.
pub const PY_WS_SERVER: &str = r#"
import sys
from websockets.sync.server import serve
def handler(ws):
    peer = ws.request.headers.get("x-mesh-peer-identity", "")
    for message in ws:
        ws.send(f"{peer}|{message}")
with serve(handler, "127.0.0.1", 0) as server:
    print("listening", server.socket.getsockname()[1], flush=True)
    server.serve_forever()
"#;

/// A WebSocket client (Python `websockets`) connecting to `ws://<host><path>` through the
/// listener at `addr` (an outbound listener); sends each message and prints JSON of the
/// answers. Arguments: addr-ip addr-port host path message...
pub const PY_WS_CLIENT: &str = r#"
import json, socket, sys
from websockets.sync.client import connect
ip, port, host, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
sock = socket.create_connection((ip, port), timeout=20)
with connect(f"ws://{host}{path}", sock=sock, open_timeout=20) as ws:
    answers = []
    for m in sys.argv[5:]:
        ws.send(m)
        answers.append(ws.recv(timeout=20))
print(json.dumps(answers))
"#;

/// [`PY_WS_SERVER`] as a background process; the port it listens on.
pub async fn websocket_server(dir: &Path) -> anyhow::Result<(Process, SocketAddr)> {
    let mut cmd = Command::new("python3");
    cmd.args(["-u", "-c", PY_WS_SERVER]);
    let process = Process::spawn("websocket-server", cmd, dir.join("ws-server.log"))?;
    let port = crate::wait::until(
        "the Python websockets server to listen (pip install websockets)",
        Duration::from_secs(30),
        || async {
            process
                .log()
                .lines()
                .find_map(|l| l.strip_prefix("listening ")?.trim().parse::<u16>().ok())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}; its log:\n{}", process.log()))?;
    Ok((process, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// Many concurrent HTTP/2 streams with Python's `h2` over mesh mTLS: `conns` connections with
/// `streams` GETs of `path` each, all in flight at once; prints JSON `{status: count}` (a
/// reset stream counts as "reset"). Arguments: host port cert key ca-bundle conns streams path.
pub const PY_H2_MANY: &str = r#"
import collections, json, selectors, socket, ssl, sys
import h2.config, h2.connection, h2.events, h2.settings
host, port, cert, key, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
conns, streams, path = int(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["h2"])
sel = selectors.DefaultSelector()
counts = collections.Counter()
pending = 0
for _ in range(conns):
    s = ctx.wrap_socket(socket.create_connection((host, port), timeout=60))
    c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
    c.increment_flow_control_window(1 << 24)
    for i in range(streams):
        c.send_headers(1 + 2 * i, [(":method", "GET"), (":scheme", "https"), (":path", f"{path}/{i}"), (":authority", "b")], end_stream=True)
        pending += 1
    s.sendall(c.data_to_send())
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, (c, {}))
while pending > 0:
    events = sel.select(timeout=60)
    if not events:
        break
    for k, _ in events:
        s, (c, status) = k.fileobj, k.data
        try:
            data = s.recv(1 << 20)
        except (ssl.SSLWantReadError, BlockingIOError):
            continue
        if not data:
            sel.unregister(s)
            continue
        for e in c.receive_data(data):
            if isinstance(e, h2.events.ResponseReceived):
                status[e.stream_id] = dict(e.headers)[b":status"].decode()
            elif isinstance(e, h2.events.DataReceived):
                c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.StreamEnded):
                counts[status.get(e.stream_id, "none")] += 1
                pending -= 1
            elif isinstance(e, h2.events.StreamReset):
                counts["reset"] += 1
                pending -= 1
        out = c.data_to_send()
        if out:
            s.setblocking(True)
            s.sendall(out)
            s.setblocking(False)
counts["unanswered"] += pending
print(json.dumps(counts))
"#;
