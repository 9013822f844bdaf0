//! The fleet simulator: N real discovery streams (real mTLS, real certificates from meshd),
//! each ACKing like a sidecar, reporting when it is in sync and when a watched resource
//! changes. Used by the push benchmark and its smoke test.

use crate::meshd::Meshd;
use crate::sidecar::{Credentials, Issuer, ScriptedSidecar};
use mesh_proto::ALL_TYPE_URLS;
use mesh_proto::v1::Node;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// What members report.
#[derive(Debug, Clone)]
pub enum Event {
    /// The member received and ACKed the first response of every type.
    Synced { member: usize, at: Instant },
    /// The member received (and ACKed) a new version of the watched resource.
    Changed { member: usize, at: Instant },
    /// The member obeyed an IdentityDirective: it holds a new certificate.
    Reissued { member: usize, at: Instant },
}

pub struct Fleet {
    pub size: usize,
    pub events: mpsc::UnboundedReceiver<Event>,
    /// Bumping it makes every member drop its stream and reconnect with what it holds.
    reconnect: watch::Sender<u64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Options of a fleet.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub size: usize,
    /// Members are spread round-robin over this many services `app-S`, each with its own
    /// identity (one certificate shared by its members)…
    pub services: usize,
    /// …and the services over namespaces `fleet-K` of this many services each.
    pub services_per_namespace: usize,
    /// The route table whose changes members report.
    pub watch_route_table: String,
    /// How many members open their streams at the same time.
    pub connect_concurrency: usize,
    /// Obey IdentityDirectives as a sidecar does (renew over mTLS at once, the window
    /// ignored: the benchmark measures the CA's rate); renewals share this concurrency.
    pub reissue_concurrency: Option<usize>,
}

/// The namespace of service `app-S`.
pub fn namespace_of(service: usize, options: &FleetOptions) -> String {
    format!("fleet-{}", service / options.services_per_namespace.max(1))
}

impl Fleet {
    /// Issues the certificates (one per service, 16 at a time) and starts the members (they
    /// connect in the background).
    pub async fn start(meshd: &Meshd, options: &FleetOptions) -> anyhow::Result<Self> {
        let services = options.services.clamp(1, options.size.max(1));
        let mut issuing = tokio::task::JoinSet::new();
        let limit = Arc::new(tokio::sync::Semaphore::new(16));
        let issuer = Issuer::of(meshd);
        for s in 0..services {
            let id = format!(
                "spiffe://cluster.local/ns/{}/sa/app-{s}",
                namespace_of(s, options)
            );
            let (issuer, limit) = (issuer.clone(), limit.clone());
            issuing.spawn(async move {
                let _permit = limit.acquire().await?;
                anyhow::Ok((s, Credentials::issue_from(&issuer, &id).await?))
            });
        }
        let mut creds: Vec<Option<Credentials>> = vec![None; services];
        while let Some(done) = issuing.join_next().await {
            let (s, c) = done??;
            creds[s] = Some(c);
        }
        let creds: Vec<Credentials> = creds.into_iter().flatten().collect();
        let (events_tx, events) = mpsc::unbounded_channel();
        let (reconnect, reconnect_rx) = watch::channel(0u64);
        let gate = Arc::new(tokio::sync::Semaphore::new(
            options.connect_concurrency.max(1),
        ));
        let reissue = options
            .reissue_concurrency
            .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1))));
        let mut tasks = Vec::with_capacity(options.size);
        let grpc_url = meshd.grpc_url();
        for member in 0..options.size {
            let service = member % creds.len();
            let creds = creds[service].clone();
            let node = Node {
                id: format!("fleet-{member}"),
                namespace: namespace_of(service, options),
                service: format!("app-{service}"),
                workload: format!("app-{service}-{member}"),
                inbound_address: format!(
                    "127.0.0.{}:{}",
                    1 + (member / 60000) % 250,
                    1024 + member % 60000
                ),
                proxy_version: "fleet-simulator".into(),
                ..Default::default()
            };
            let ctx = Member {
                member,
                grpc_url: grpc_url.clone(),
                creds,
                node,
                watch: options.watch_route_table.clone(),
                events: events_tx.clone(),
                reconnect: reconnect_rx.clone(),
                gate: gate.clone(),
                reissue: reissue.clone(),
            };
            tasks.push(tokio::spawn(ctx.run()));
        }
        Ok(Self {
            size: options.size,
            events,
            reconnect,
            tasks,
        })
    }

    /// Waits until `n` events matching `want` arrive; returns their times.
    pub async fn collect(
        &mut self,
        n: usize,
        deadline: Duration,
        want: fn(&Event) -> bool,
    ) -> anyhow::Result<Vec<Instant>> {
        let end = Instant::now() + deadline;
        let mut seen = BTreeMap::new();
        while seen.len() < n {
            let left = end.saturating_duration_since(Instant::now());
            let event = tokio::time::timeout(left, self.events.recv())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "only {} of {n} members reported within {deadline:?}",
                        seen.len()
                    )
                })?
                .ok_or_else(|| anyhow::anyhow!("the fleet stopped"))?;
            if want(&event) {
                let (member, at) = match event {
                    Event::Synced { member, at }
                    | Event::Changed { member, at }
                    | Event::Reissued { member, at } => (member, at),
                };
                seen.insert(member, at);
            }
        }
        Ok(seen.into_values().collect())
    }

    /// Drops every stream at once; members reconnect with the versions they hold.
    pub fn drop_all_streams(&self) {
        self.reconnect.send_modify(|g| *g += 1);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Member {
    member: usize,
    grpc_url: String,
    creds: Credentials,
    node: Node,
    watch: String,
    events: mpsc::UnboundedSender<Event>,
    reconnect: watch::Receiver<u64>,
    gate: Arc<tokio::sync::Semaphore>,
    reissue: Option<Arc<tokio::sync::Semaphore>>,
}

impl Member {
    async fn run(mut self) {
        let mut holds = BTreeMap::new();
        let mut watched_version: Option<String> = None;
        let mut handled_generation = 0u64;
        loop {
            let permit = self.gate.acquire().await;
            let opened = ScriptedSidecar::open_url(
                &self.grpc_url,
                &self.creds,
                self.node.clone(),
                holds.clone(),
            )
            .await;
            let mut s = match opened {
                Ok(s) => s,
                Err(_) => {
                    drop(permit);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut subscribed = true;
            for ty in &ALL_TYPE_URLS[1..] {
                subscribed &= s.subscribe(ty).await.is_ok();
            }
            drop(permit);
            if !subscribed {
                continue;
            }
            let mut firsts = std::collections::BTreeSet::new();
            let mut synced = false;
            loop {
                tokio::select! {
                    r = s.recv() => {
                        let Ok(r) = r else { break };
                        if s.ack(&r).await.is_err() {
                            break;
                        }
                        let at = Instant::now();
                        self.follow_identity(&r, &mut handled_generation);
                        if r.type_url == mesh_proto::ROUTE_TABLE_TYPE_URL
                            && let Some(res) = r.resources.iter().find(|x| x.name == self.watch)
                        {
                            if watched_version.as_ref().is_some_and(|v| *v != res.version) {
                                let _ = self.events.send(Event::Changed { member: self.member, at });
                            }
                            watched_version = Some(res.version.clone());
                        }
                        if !synced {
                            firsts.insert(r.type_url.clone());
                            if firsts.len() == ALL_TYPE_URLS.len() {
                                synced = true;
                                let _ = self.events.send(Event::Synced { member: self.member, at });
                            }
                        }
                    }
                    _ = self.reconnect.changed() => break,
                }
            }
            holds = s.holds.clone();
        }
    }

    /// As a sidecar: a new trust bundle replaces the anchors; a new IdentityDirective makes
    /// the member renew over mTLS (in the background, so the stream keeps ACKing).
    fn follow_identity(&self, r: &mesh_proto::v1::DiscoveryResponse, handled: &mut u64) {
        use mesh_proto::v1::resource::Body;
        let Some(gate) = &self.reissue else {
            return;
        };
        for res in &r.resources {
            match &res.body {
                Some(Body::TrustBundle(b)) => {
                    let pem: String = b.roots.iter().map(|r| r.pem.as_str()).collect();
                    if let Ok(bundle) = mesh_ca::TrustBundle::from_pem(&pem) {
                        let _ = self.creds.anchors.replace(&bundle);
                    }
                }
                Some(Body::IdentityDirective(d)) if d.generation > *handled => {
                    *handled = d.generation;
                    let (gate, creds) = (gate.clone(), self.creds.clone());
                    let (url, id, member) =
                        (self.grpc_url.clone(), self.node.id.clone(), self.member);
                    let events = self.events.clone();
                    tokio::spawn(async move {
                        let _permit = gate.acquire().await;
                        let Ok(identity) = creds.identity.parse::<mesh_ca::SpiffeId>() else {
                            return;
                        };
                        for _ in 0..20 {
                            let renewed = async {
                                let ch = mesh_client::channel(
                                    &url,
                                    creds.anchors.clone(),
                                    creds.cert.clone(),
                                )
                                .await?;
                                mesh_client::request_certificate(
                                    ch,
                                    &identity,
                                    Duration::ZERO,
                                    None,
                                    &id,
                                )
                                .await
                            };
                            if renewed.await.is_ok() {
                                let at = Instant::now();
                                let _ = events.send(Event::Reissued { member, at });
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    });
                }
                _ => {}
            }
        }
    }
}
