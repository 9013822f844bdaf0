//! A small fleet for rotation tests: meshd behind a [`Gate`] (so it can be restarted on a new
//! port at the same address), N echo apps each behind a real mesh-proxy, and a steady request
//! loop around the ring (sidecar i calls service i+1) that counts every failure. Or several
//! meshd replicas on one PostgreSQL ([`Ring::start_replicas`]), the sidecars spread over them.

use crate::echo::EchoApp;
use crate::meshd::{Meshd, MeshdOptions};
use crate::proxy::{Gate, Proxy, ProxyOptions};
use crate::wait;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The services of the ring, in order.
pub const NAMES: [&str; 4] = ["a", "b", "c", "d"];

/// Every sidecar of a ring replaces its mesh connection to the next after this many requests
/// (`--max-requests-per-connection`), so that whatever changes (a certificate, the trust
/// bundle, a TLS policy) is met by new handshakes all along, not only by connections opened
/// before it. Every edge of the ring reconnects: while some sidecars hold a certificate of one
/// CA and others one of the other, some edge goes from an old holder to a new one and another
/// the other way (a ring has no order that avoids both).
pub const REQUESTS_PER_CONNECTION: &str = "2";

pub fn identity(name: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{name}")
}

pub struct Ring {
    pub dir: PathBuf,
    /// The (first) meshd replica.
    pub meshd: Meshd,
    /// The other replicas ([`Ring::start_replicas`]).
    pub others: Vec<Meshd>,
    /// In front of `meshd` ([`Ring::start`]), or per sidecar and replica (`start_replicas`).
    gates: Vec<Gate>,
    pub apps: Vec<EchoApp>,
    pub proxies: Vec<Proxy>,
    meshd_options: MeshdOptions,
}

impl Ring {
    /// meshd (with `meshd_args`) and one sidecar per name of [`NAMES`] (with `proxy_args`),
    /// each ready and able to reach the next.
    pub async fn start(dir: &Path, meshd_args: &[&str], proxy_args: &[&str]) -> Self {
        let meshd_options = MeshdOptions {
            args: meshd_args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        };
        let meshd = Meshd::start(&dir.join("meshd"), &meshd_options)
            .await
            .expect("meshd starts");
        let gate = Gate::start(&meshd.grpc_addr, true).await.expect("gate");
        let mut ring = Self {
            dir: dir.to_path_buf(),
            meshd,
            others: Vec::new(),
            gates: Vec::new(),
            apps: Vec::new(),
            proxies: Vec::new(),
            meshd_options,
        };
        let urls = vec![gate.url()];
        ring.gates.push(gate);
        for name in NAMES {
            ring.add_sidecar(name, urls.clone(), proxy_args).await;
        }
        ring.wait_reachable().await;
        ring
    }

    /// `replicas` meshd replicas on the PostgreSQL database `database_url`, sharing one
    /// key-encryption key, and one sidecar per name of [`NAMES`] that knows every replica
    /// (one `--control-plane` each). Sidecar i starts on replica i mod `replicas` (the others
    /// are closed to it until every sidecar is ready), so each replica holds sidecars; then it
    /// may fail over to any replica.
    pub async fn start_replicas(dir: &Path, database_url: &str, replicas: usize) -> Self {
        std::fs::create_dir_all(dir).expect("test dir");
        let kek = dir.join("kek");
        let hex = mesh_ca::KeyEncryptionKey::generate()
            .expect("a key-encryption key")
            .to_hex();
        std::fs::write(&kek, hex.as_bytes()).expect("kek file");
        let meshd_options = MeshdOptions {
            database_url: Some(database_url.to_string()),
            args: vec!["--kek-file".into(), kek.display().to_string()],
        };
        // The first replica creates the CA; the others find it in the store.
        let mut all = Vec::new();
        for i in 0..replicas.max(1) {
            let meshd = Meshd::start(&dir.join(format!("meshd-{i}")), &meshd_options)
                .await
                .expect("meshd replica starts");
            all.push(meshd);
        }
        let meshd = all.remove(0);
        let mut ring = Self {
            dir: dir.to_path_buf(),
            meshd,
            others: all,
            gates: Vec::new(),
            apps: Vec::new(),
            proxies: Vec::new(),
            meshd_options,
        };
        for (i, name) in NAMES.iter().enumerate() {
            let home = i % ring.replica_count();
            let mut urls = Vec::new();
            let mut gates = Vec::new();
            for (r, replica) in ring.replicas().enumerate() {
                let gate = Gate::start(&replica.grpc_addr, r == home)
                    .await
                    .expect("gate");
                // The home replica first: the first certificate is asked there.
                if r == home {
                    urls.insert(0, gate.url());
                } else {
                    urls.push(gate.url());
                }
                gates.push(gate);
            }
            ring.gates.extend(gates);
            ring.add_sidecar(name, urls, &[]).await;
        }
        ring.wait_reachable().await;
        for gate in &ring.gates {
            gate.set_open(true);
        }
        ring
    }

    /// Certificates meshd issued to `identity` (expired ones included; the store is shared by
    /// every replica).
    pub async fn issued_to(&self, identity: &str) -> usize {
        let path = format!(
            "/api/v1/certificates?identity={}",
            identity.replace(':', "%3A").replace('/', "%2F")
        );
        self.meshd.admin_get(&path).await["certificates"]
            .as_array()
            .map_or(0, Vec::len)
    }

    /// How many certificates meshd issued to each sidecar of the ring, in [`NAMES`] order.
    pub async fn issued_counts(&self) -> Vec<usize> {
        let mut counts = Vec::new();
        for name in NAMES {
            counts.push(self.issued_to(&identity(name)).await);
        }
        counts
    }

    /// Waits until every sidecar holds a certificate newer than those counted in `before`
    /// ([`Ring::issued_counts`]); panics with the logs after `deadline`.
    pub async fn wait_every_sidecar_reissued(&self, before: &[usize], deadline: Duration) {
        let renewed = crate::wait::until("every sidecar re-issued", deadline, || async {
            let now = self.issued_counts().await;
            now.iter().zip(before).all(|(n, b)| n > b).then_some(())
        })
        .await;
        assert!(renewed.is_ok(), "{}", self.logs());
    }

    /// Every replica, the first one first.
    pub fn replicas(&self) -> impl Iterator<Item = &Meshd> {
        std::iter::once(&self.meshd).chain(&self.others)
    }

    fn replica_count(&self) -> usize {
        1 + self.others.len()
    }

    /// A newcomer: one more sidecar, for identity `name`, serving `service` (one more endpoint
    /// of it: its echo app answers as `service`), started now, while the ring runs; returns
    /// its index in `proxies`.
    pub async fn add_newcomer(&mut self, name: &str, service: &str) -> usize {
        let urls = vec![self.gates[0].url()];
        self.add_sidecar_serving(name, service, urls, &[]).await;
        self.proxies.len() - 1
    }

    async fn add_sidecar(&mut self, name: &str, control_planes: Vec<String>, args: &[&str]) {
        self.add_sidecar_serving(name, name, control_planes, args)
            .await
    }

    async fn add_sidecar_serving(
        &mut self,
        name: &str,
        service: &str,
        control_planes: Vec<String>,
        args: &[&str],
    ) {
        let app = EchoApp::start(service).await.expect("echo app");
        let args = [
            &["--max-requests-per-connection", REQUESTS_PER_CONNECTION][..],
            args,
        ]
        .concat();
        let proxy = Proxy::start(
            &self.meshd,
            &self.dir.join(name),
            &identity(name),
            app.addr,
            &ProxyOptions {
                control_planes,
                args: args.iter().map(|a| a.to_string()).collect(),
                service: Some(service.to_string()),
                ..Default::default()
            },
        )
        .await
        .expect("sidecar starts");
        self.apps.push(app);
        self.proxies.push(proxy);
    }

    /// Waits until every sidecar reaches the next one.
    async fn wait_reachable(&self) {
        for (i, p) in self.proxies.iter().enumerate() {
            p.get_until(NAMES[(i + 1) % NAMES.len()], "/", 200).await;
        }
    }

    /// The subject of meshd's signing CA, and those of the roots of its bundle.
    pub async fn ca_subjects(&self) -> (String, Vec<String>) {
        let ca = self.meshd.admin_get("/api/v1/ca").await;
        let subject = |v: &serde_json::Value| v["subject"].as_str().unwrap_or_default().to_string();
        let roots = ca["roots"]
            .as_array()
            .into_iter()
            .flatten()
            .map(subject)
            .collect();
        (subject(&ca["signing"]), roots)
    }

    /// Handshakes by issuer ([`Handshake`]) counted so far by each sidecar, in [`NAMES`]
    /// order.
    pub async fn handshakes(&self) -> Vec<Handshakes> {
        let mut all = Vec::new();
        for p in &self.proxies {
            let (_, metrics) = p.admin("/metrics").await;
            all.push(parse_handshakes(&metrics));
        }
        all
    }

    /// Waits until the handshakes each sidecar counted since `before` satisfy `check`; returns
    /// them. Panics after `deadline` with what was counted, and the logs.
    pub async fn wait_handshakes(
        &self,
        what: &str,
        before: &[Handshakes],
        deadline: Duration,
        check: impl Fn(&[Handshakes]) -> bool,
    ) -> Vec<Handshakes> {
        let last = std::sync::Mutex::new(Vec::new());
        let found = wait::until(what, deadline, || async {
            let now = self.handshakes().await;
            let since: Vec<Handshakes> = now
                .iter()
                .enumerate()
                .map(|(i, h)| handshakes_since(h, before.get(i).unwrap_or(&Handshakes::new())))
                .collect();
            let ok = check(&since);
            *last.lock().unwrap_or_else(|p| p.into_inner()) = since.clone();
            ok.then_some(since)
        })
        .await;
        let last = last.into_inner().unwrap_or_else(|p| p.into_inner());
        found.unwrap_or_else(|e| {
            let shown: Vec<String> = NAMES
                .iter()
                .zip(&last)
                .map(|(name, h)| format!("sidecar {name}:\n{}", show_handshakes(h)))
                .collect();
            panic!(
                "{e}; handshakes counted meanwhile:\n{}\n{}",
                shown.join("\n"),
                self.logs()
            )
        })
    }

    /// Kills meshd (SIGKILL) and starts it again on the same data, behind the same gate (a
    /// ring of [`Ring::start`]).
    pub async fn restart_meshd(&mut self) {
        self.meshd.process.kill();
        let meshd = Meshd::start(&self.meshd.data_dir, &self.meshd_options)
            .await
            .expect("meshd restarts");
        for gate in &self.gates {
            gate.set_target(&meshd.grpc_addr);
        }
        self.meshd = meshd;
    }

    /// Starts the request loop around the ring.
    pub fn traffic(&self) -> Traffic {
        let targets = self
            .proxies
            .iter()
            .enumerate()
            .map(|(i, p)| (p.outbound_addr, NAMES[(i + 1) % NAMES.len()].to_string()))
            .collect();
        Traffic::start(targets)
    }

    /// Every sidecar's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, m) in self.replicas().enumerate() {
            out.push_str(&format!("meshd {i}:\n{}\n", m.process.log()));
        }
        for (name, p) in NAMES.iter().zip(&self.proxies) {
            out.push_str(&format!("sidecar {name}:\n{}\n", p.log()));
        }
        out
    }

    /// The latest rotation as `GET /api/v1/ca/rotation` shows it.
    pub async fn rotation(&self) -> serde_json::Value {
        self.meshd.admin_get("/api/v1/ca/rotation").await
    }

    /// Waits until the rotation's status satisfies `done`.
    pub async fn wait_rotation(
        &self,
        what: &str,
        deadline: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.wait_rotation_on(&self.meshd, what, deadline, done)
            .await
    }

    /// Waits until the rotation's status on `replica` satisfies `done`.
    pub async fn wait_rotation_on(
        &self,
        replica: &Meshd,
        what: &str,
        deadline: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let last = std::sync::Mutex::new(serde_json::Value::Null);
        let found = wait::until(what, deadline, || async {
            let r = replica.admin_get("/api/v1/ca/rotation").await;
            let ok = done(&r);
            *last.lock().unwrap_or_else(|p| p.into_inner()) = r.clone();
            ok.then_some(r)
        })
        .await;
        let last = last.into_inner().unwrap_or_else(|p| p.into_inner());
        found.unwrap_or_else(|e| panic!("{e}; last status {last}\n{}", self.logs()))
    }
}

/// Requests in a loop through every (outbound address, host) pair, one task each, until
/// stopped; every answer other than 200 and every error is kept.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Traffic {
    pub fn start(targets: Vec<(SocketAddr, String)>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let tasks = targets
            .into_iter()
            .map(|(addr, host)| {
                let (stop, ok) = (stop.clone(), ok.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let mut failed = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let r = client
                            .get(format!("http://{addr}/loop"))
                            .header("host", &host)
                            .timeout(Duration::from_secs(20))
                            .send()
                            .await;
                        match r {
                            Ok(r) => {
                                let status = r.status();
                                match r.text().await {
                                    // A 200 counts only from the service asked for: its echo
                                    // app answers with its own id.
                                    Ok(body)
                                        if status == 200
                                            && answered_by(&body).as_deref()
                                                == Some(host.as_str()) =>
                                    {
                                        ok.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Ok(body) => failed.push(format!("→{host}: {status} {body}")),
                                    Err(e) => failed.push(format!("→{host}: {status}, body: {e}")),
                                }
                            }
                            Err(e) => failed.push(format!("→{host}: {e}")),
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    failed
                })
            })
            .collect();
        Self { stop, ok, tasks }
    }

    /// Requests answered 200 so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests succeeded (the loop is running).
    pub async fn wait_more(&self, n: u64) {
        let target = self.ok() + n;
        wait::until(
            "the request loop to make progress",
            Duration::from_secs(60),
            || async { (self.ok() >= target).then_some(()) },
        )
        .await
        .expect("the request loop runs");
    }

    /// Waits until more than `at_least` requests succeeded in all and 20 more went through,
    /// stops the loop and asserts what every rotation test promises: not one request failed
    /// (`logs` is shown if one did).
    pub async fn finish(self, at_least: u64, logs: impl FnOnce() -> String) {
        if self.ok() <= at_least {
            self.wait_more(at_least + 1 - self.ok()).await;
        }
        self.wait_more(20).await;
        let (ok, failed) = self.stop().await;
        assert!(failed.is_empty(), "failed requests: {failed:?}\n{}", logs());
        assert!(ok > at_least, "the loop ran ({ok} requests)");
    }

    /// Stops the loop: (requests that succeeded, every failure).
    pub async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failed = Vec::new();
        for t in self.tasks {
            failed.extend(t.await.unwrap_or_else(|e| vec![format!("loop task: {e}")]));
        }
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

/// One kind of completed mesh handshake, as a sidecar counts it in
/// `mesh_proxy_tls_handshakes_by_issuer_total`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Handshake {
    /// `inbound` (the sidecar accepted) or `outbound` (it dialled).
    pub direction: String,
    /// The issuer of the sidecar's own certificate (the signing CA's subject).
    pub local_issuer: String,
    /// The issuer of the peer's certificate.
    pub peer_issuer: String,
    /// The subjects of the roots the sidecar trusted, sorted.
    pub trusted: Vec<String>,
}

/// Handshake counts by kind.
pub type Handshakes = std::collections::BTreeMap<Handshake, u64>;

/// The counts of `mesh_proxy_tls_handshakes_by_issuer_total` in a `/metrics` text.
pub fn parse_handshakes(metrics: &str) -> Handshakes {
    let mut out = Handshakes::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("mesh_proxy_tls_handshakes_by_issuer_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(n) = value.trim().parse::<f64>() else {
            continue;
        };
        let labels = parse_labels(labels);
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let mut trusted: Vec<String> = get("trusted")
            .split(" | ")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        trusted.sort();
        let kind = Handshake {
            direction: get("direction"),
            local_issuer: get("local_issuer"),
            peer_issuer: get("peer_issuer"),
            trusted,
        };
        *out.entry(kind).or_default() += n as u64;
    }
    out
}

/// `k="v",k2="v2"` (Prometheus text format, values escaped with `\\`) → map.
fn parse_labels(text: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => {}
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').to_string(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

/// The counts in `now` beyond those in `before` (kinds with none dropped).
pub fn handshakes_since(now: &Handshakes, before: &Handshakes) -> Handshakes {
    now.iter()
        .filter_map(|(k, n)| {
            let d = n.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// One line per kind, for failure messages.
pub fn show_handshakes(h: &Handshakes) -> String {
    h.iter()
        .map(|(k, n)| {
            format!(
                "  {n:>6} {} local={:?} peer={:?} trusted={:?}",
                k.direction, k.local_issuer, k.peer_issuer, k.trusted
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `h` holds handshakes in `direction` between a sidecar whose certificate `local`
/// issued and a peer whose certificate `peer` issued, while the sidecar trusted exactly the
/// roots `trusted`.
pub fn saw(h: &Handshakes, direction: &str, local: &str, peer: &str, trusted: &[&str]) -> bool {
    let mut want: Vec<String> = trusted.iter().map(|s| s.to_string()).collect();
    want.sort();
    h.keys().any(|k| {
        k.direction == direction
            && k.local_issuer == local
            && k.peer_issuer == peer
            && k.trusted == want
    })
}

/// The CAs of a rotation as the handshake metric names them: the issuer of each side's
/// certificates (the signing CA's subject) and the roots trusted before and after.
#[derive(Debug, Clone)]
pub struct RotationCas {
    pub old: String,
    pub new: String,
    pub old_roots: Vec<String>,
    pub new_roots: Vec<String>,
}

impl RotationCas {
    /// A rotation to a new root: `before` is [`Ring::ca_subjects`] before it started, `roots`
    /// the root subjects during prepare (the old ones and the new one).
    pub fn new_root(before: &(String, Vec<String>), roots: &[String]) -> Self {
        let new: Vec<String> = roots
            .iter()
            .filter(|r| !before.1.contains(r))
            .cloned()
            .collect();
        assert_eq!(new.len(), 1, "one new root in {roots:?} beside {before:?}");
        Self {
            old: before.0.clone(),
            new: new[0].clone(),
            old_roots: before.1.clone(),
            new_roots: new,
        }
    }

    /// Every root trusted mid-rotation.
    fn all_roots(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self
            .old_roots
            .iter()
            .chain(&self.new_roots)
            .map(String::as_str)
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Handshakes in both directions between `local` and `peer` issuers, trusting `trusted`.
    fn both_ways(h: &Handshakes, local: &str, peer: &str, trusted: &[&str]) -> bool {
        ["inbound", "outbound"]
            .iter()
            .all(|d| saw(h, d, local, peer, trusted))
    }

    /// What *prepare* is for: every sidecar, holding an old certificate, handshakes both ways
    /// while trusting both roots.
    pub fn prepare_seen(&self, each: &[Handshakes]) -> bool {
        let all = self.all_roots();
        !each.is_empty()
            && each
                .iter()
                .all(|h| Self::both_ways(h, &self.old, &self.old, &all))
    }

    /// What *switch* is for: holders of an old and of a new certificate handshake with each
    /// other, either one dialling, seen from both ends; and every sidecar takes part in such a
    /// handshake (as the old or the new holder).
    pub fn switch_seen(&self, each: &[Handshakes]) -> bool {
        let all = self.all_roots();
        let sum = total(each);
        let mixed = |h: &Handshakes| {
            ["inbound", "outbound"].iter().any(|d| {
                saw(h, d, &self.old, &self.new, &all) || saw(h, d, &self.new, &self.old, &all)
            })
        };
        Self::both_ways(&sum, &self.old, &self.new, &all)
            && Self::both_ways(&sum, &self.new, &self.old, &all)
            && each.iter().all(mixed)
    }

    /// What *finalize* leaves: every sidecar handshakes both ways on new certificates, the new
    /// roots alone trusted.
    pub fn finalize_seen(&self, each: &[Handshakes]) -> bool {
        let roots: Vec<&str> = self.new_roots.iter().map(String::as_str).collect();
        !each.is_empty()
            && each
                .iter()
                .all(|h| Self::both_ways(h, &self.new, &self.new, &roots))
    }

    /// What a rollback leaves: every sidecar handshakes both ways on old certificates, the old
    /// roots alone trusted.
    pub fn rolled_back_seen(&self, each: &[Handshakes]) -> bool {
        let roots: Vec<&str> = self.old_roots.iter().map(String::as_str).collect();
        !each.is_empty()
            && each
                .iter()
                .all(|h| Self::both_ways(h, &self.old, &self.old, &roots))
    }
}

/// The counts of several sidecars, summed.
pub fn total(each: &[Handshakes]) -> Handshakes {
    let mut sum = Handshakes::new();
    for h in each {
        for (k, n) in h {
            *sum.entry(k.clone()).or_default() += n;
        }
    }
    sum
}

/// The id of the echo app that wrote `body` (its JSON `id`).
fn answered_by(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["id"].as_str().map(str::to_string)
}

/// The SHA-256 fingerprints of the roots in `GET /api/v1/ca`'s answer, in its order.
pub fn root_fingerprints(ca: &serde_json::Value) -> Vec<String> {
    ca["roots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["fingerprint"].as_str().map(str::to_string))
        .collect()
}

/// PEM certificates in `text` (e.g. `openssl s_client -showcerts` output), in order.
pub fn pem_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(len) = rest[start..].find("-----END CERTIFICATE-----") else {
            break;
        };
        let end = start + len + "-----END CERTIFICATE-----".len();
        out.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    out
}

/// `openssl verify -CAfile bundle cert`: whether it verified, and what openssl said.
pub fn openssl_verify(bundle: &Path, cert: &Path) -> (bool, String) {
    let mut cmd = std::process::Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(bundle).arg(cert);
    crate::process::output_text(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_counts_are_read_from_the_metrics_text() {
        let text = "# TYPE x counter\n\
            mesh_proxy_tls_handshakes_by_issuer_total{direction=\"inbound\",local_issuer=\"O=meshd, CN=old\",peer_issuer=\"O=meshd, CN=new\",trusted=\"O=meshd, CN=old | O=meshd, CN=new\"} 3\n\
            mesh_proxy_tls_handshakes_total{direction=\"inbound\",result=\"ok\"} 9\n";
        let h = parse_handshakes(text);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h.values().next(), Some(&3));
        assert!(saw(
            &h,
            "inbound",
            "O=meshd, CN=old",
            "O=meshd, CN=new",
            &["O=meshd, CN=new", "O=meshd, CN=old"]
        ));
        assert!(!saw(
            &h,
            "outbound",
            "O=meshd, CN=old",
            "O=meshd, CN=new",
            &[]
        ));
        assert!(handshakes_since(&h, &h).is_empty());
    }
}
