//! `GET /api/v1/events`: the live feed of the dashboard, as server-sent events.
//!
//! One task ([`Live`]) looks at the fleet once a second ([`TICK`]) and broadcasts what
//! changed to every open stream, so the cost per tick is one pass over the sidecars however
//! many browsers watch, and a browser receives changes, not the fleet:
//!
//! | event | data | when |
//! |---|---|---|
//! | `hello` | `{"role", "interval_seconds", "at"}` | first, once |
//! | `summary` | `{"total", "counts": {SYNCED, STALE, NACKED, CONNECTING}, "nacks": [{"id", "type_url", "nack"}], "nacked_types", "at"}` | at the start, then when it changed |
//! | `sidecars` | `{"upserted": [sidecar], "removed": [id]}`, a sidecar as in `GET /api/v1/sidecars` | when some changed (connected, ACK/NACK, left) |
//! | `sidecars` | `{"resync": true, "changed": N}` | instead, when more than [`MAX_DELTA`] changed at once, the stream fell behind, or the hub just started watching (first watcher): fetch the page again |
//! | `stats` | the current part of `GET /api/v1/stats` (`rates`, `push_latency`, `point`) | every tick |
//! | `ca` | the body of `GET /api/v1/ca` | when it changed (roots, rotation phase and progress) |
//!
//! A client opens the stream, and on `hello` fetches the page of sidecars it shows
//! (`GET /api/v1/sidecars?offset=&limit=&q=&state=`); it then patches the rows it shows with
//! `upserted`, and fetches its page again when sidecars came or went. `nacks` lists at most
//! [`MAX_NACKS`] of the NACKs in force (the types whose newest response was rejected).
//!
//! The stream needs a token like every API call; since the browser's `EventSource` cannot send
//! an `Authorization` header, the dashboard reads it with `fetch()`.

use super::sidecars::{SidecarState, counts, sidecar_view, state_of};
use super::stats::{self, HISTORY, Sample};
use super::{AdminState, Caller};
use crate::xds::SidecarStatus;
use crate::xds::stream::SyncState;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use mesh_admin_api as api;
use serde_json::Value;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

/// How often the fleet is looked at and the metrics sampled.
pub const TICK: Duration = Duration::from_secs(1);
/// The most sidecars one `sidecars` event carries; past that, `resync`.
pub const MAX_DELTA: usize = 200;
/// The most NACKs a `summary` lists.
pub const MAX_NACKS: usize = 20;
/// How often the CA is read for changes (a store query) while someone watches.
const CA_EVERY: u32 = 2;
/// How long the certificate expiry of the sidecars' identities is reused.
const EXPIRY_REFRESH: Duration = Duration::from_secs(10);

/// One tick's events, serialized once for every stream.
struct Tick {
    events: Vec<(&'static str, String)>,
}

/// The live-feed hub and the metrics history. Cheap to clone.
#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

struct Inner {
    state: AdminState,
    ticks: broadcast::Sender<Arc<Tick>>,
    samples: Mutex<VecDeque<Sample>>,
    /// The newest certificate expiry by identity, and when it was read.
    expiry: Mutex<Option<(Instant, Expiry)>>,
}

/// The newest certificate expiry by identity.
pub type Expiry = Arc<HashMap<String, super::sidecars::HeldCert>>;

// === impl Live ===

impl Live {
    /// Starts the once-a-second task (when called inside a Tokio runtime; outside one, as in
    /// a unit test building the router, the feed stays silent). It ends at shutdown.
    pub fn start(state: AdminState) -> Self {
        let (ticks, _) = broadcast::channel(16);
        let live = Self {
            inner: Arc::new(Inner {
                state,
                ticks,
                samples: Mutex::new(VecDeque::with_capacity(HISTORY)),
                expiry: Mutex::new(None),
            }),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(live.clone().run());
        }
        live
    }

    /// The metrics history, oldest first.
    pub fn samples(&self) -> VecDeque<Sample> {
        lock(&self.inner.samples).clone()
    }

    /// Certificate expiry for the dashboard's pages and the feed: read from the store (every
    /// live certificate) at most every [`EXPIRY_REFRESH`], or every half [`TICK`] while an
    /// identity in `wanted` is missing (a sidecar that just connected with a new certificate).
    /// However many dashboards page through the fleet, that is at most two such queries a
    /// second.
    pub async fn expiry<'a>(&self, mut wanted: impl Iterator<Item = &'a str>) -> Expiry {
        if let Some((at, map)) = lock(&self.inner.expiry).clone() {
            let age = at.elapsed();
            if age < TICK / 2 || (age < EXPIRY_REFRESH && wanted.all(|id| map.contains_key(id))) {
                return map;
            }
        }
        let map = Arc::new(super::sidecars::expiry_or_empty(&self.inner.state).await);
        *lock(&self.inner.expiry) = Some((Instant::now(), map.clone()));
        map
    }

    fn sample(&self) {
        let sample = Sample::parse(&self.inner.state.metrics.render(), unix_now());
        let mut samples = lock(&self.inner.samples);
        if samples.len() == HISTORY {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    async fn run(self) {
        let mut shutdown = self.inner.state.shutdown.clone();
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut fleet = FleetWatch::default();
        let mut tick_no: u32 = 0;
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            tick_no = tick_no.wrapping_add(1);
            self.sample();
            if self.inner.ticks.receiver_count() == 0 {
                // Nobody watches: no pass over the fleet. The next watcher's first tick says
                // `resync` rather than sending the fleet whole.
                fleet = FleetWatch::default();
                continue;
            }
            let mut events = Vec::new();
            let sidecars = self.inner.state.xds.sidecars();
            let expiry = self
                .expiry(sidecars.iter().map(|s| s.identity.as_str()))
                .await;
            if let Some(delta) = fleet.delta(&sidecars, &expiry) {
                events.push(("sidecars", delta.to_string()));
            }
            let summary = fleet_summary(&sidecars);
            let summary_text = to_json(&summary);
            if fleet.last_summary.as_deref() != Some(summary_text.as_str()) {
                let with_time = api::events::FleetSummary {
                    at: Some(unix_now()),
                    ..summary
                };
                events.push(("summary", to_json(&with_time)));
                fleet.last_summary = Some(summary_text);
            }
            events.push(("stats", stats::current(&self.samples()).to_string()));
            if tick_no.is_multiple_of(CA_EVERY) || fleet.ca_hash.is_none() {
                let ca = ca_body(&self.inner.state).await;
                let hash = hash_of(&ca);
                if fleet.ca_hash != Some(hash) {
                    fleet.ca_hash = Some(hash);
                    events.push(("ca", ca));
                }
            }
            // No receiver left since the check: nothing lost, the next tick starts afresh.
            let _ = self.inner.ticks.send(Arc::new(Tick { events }));
        }
    }
}

/// What the hub remembers of the fleet between ticks, while someone watches.
#[derive(Default)]
struct FleetWatch {
    /// The sidecars seen at the last tick, by id: a hash of what the dashboard shows of each.
    /// `None` until the first tick with a watcher.
    seen: Option<HashMap<String, u64>>,
    last_summary: Option<String>,
    ca_hash: Option<u64>,
}

impl FleetWatch {
    /// The `sidecars` event for what changed since the last tick, if anything did.
    fn delta(
        &mut self,
        sidecars: &[SidecarStatus],
        expiry: &HashMap<String, super::sidecars::HeldCert>,
    ) -> Option<Value> {
        let now: HashMap<String, u64> = sidecars
            .iter()
            .map(|s| (s.id.clone(), hash_sidecar(s, expiry.get(&s.identity))))
            .collect();
        // The first tick with a watcher has nothing to compare with: whatever changed since
        // the watcher fetched its page is unknown, so it fetches it again.
        let Some(before) = self.seen.replace(now) else {
            return Some(resync(sidecars.len()));
        };
        let now = self.seen.as_ref()?;
        let upserted: Vec<&SidecarStatus> = sidecars
            .iter()
            .filter(|s| before.get(&s.id) != now.get(&s.id))
            .collect();
        let removed: Vec<&String> = before.keys().filter(|id| !now.contains_key(*id)).collect();
        if upserted.is_empty() && removed.is_empty() {
            return None;
        }
        if upserted.len() + removed.len() > MAX_DELTA {
            return Some(resync(upserted.len() + removed.len()));
        }
        let delta = api::events::SidecarsEvent::Delta {
            upserted: upserted.iter().map(|s| sidecar_view(s, expiry)).collect(),
            removed: removed.into_iter().cloned().collect(),
        };
        Some(serde_json::to_value(delta).unwrap_or_default())
    }
}

/// A hash of what the dashboard shows of a sidecar.
fn hash_sidecar(s: &SidecarStatus, expiry: Option<&super::sidecars::HeldCert>) -> u64 {
    let mut h = DefaultHasher::new();
    (
        &s.identity,
        &s.namespace,
        &s.service,
        &s.workload,
        &s.remote,
        s.connected_at,
        s.last_seen,
        expiry,
    )
        .hash(&mut h);
    for t in &s.types {
        (
            &t.type_url,
            std::mem::discriminant(&t.state),
            &t.sent_version,
            &t.acked_version,
            &t.nack,
        )
            .hash(&mut h);
    }
    h.finish()
}

fn hash_of(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// "Fetch the list again": `changed` sidecars changed.
fn resync(changed: usize) -> Value {
    let event = api::events::SidecarsEvent::Resync {
        resync: true,
        changed: changed as u64,
    };
    serde_json::to_value(event).unwrap_or_default()
}

/// An event's data.
fn to_json(data: &impl serde::Serialize) -> String {
    serde_json::to_string(data).unwrap_or_default()
}

/// The fleet's counts and the NACKs in force, as JSON.
#[cfg(test)]
fn summary(sidecars: &[SidecarStatus]) -> Value {
    serde_json::to_value(fleet_summary(sidecars)).unwrap_or_default()
}

/// The fleet's counts and the NACKs in force.
fn fleet_summary(sidecars: &[SidecarStatus]) -> api::events::FleetSummary {
    let mut nacks = Vec::new();
    let mut nacked_types = 0usize;
    for s in sidecars {
        if state_of(s) != SidecarState::Nacked {
            continue;
        }
        for t in s.types.iter().filter(|t| t.state == SyncState::Nacked) {
            nacked_types += 1;
            if nacks.len() < MAX_NACKS {
                nacks.push(api::events::Nack {
                    id: s.id.clone(),
                    type_url: t.type_url.clone(),
                    nack: t.nack.clone(),
                });
            }
        }
    }
    api::events::FleetSummary {
        total: sidecars.len(),
        counts: counts(sidecars),
        nacks,
        nacked_types,
        at: None,
    }
}

/// The body `GET /api/v1/ca` answers, whatever fields it has (the rotation's progress
/// included), so that the feed follows that endpoint without a copy of it.
async fn ca_body(state: &AdminState) -> String {
    let axum::Json(status) = super::ca::status(State(state.clone())).await;
    match serde_json::to_string(&status) {
        Ok(text) => text,
        Err(e) => serde_json::to_string(&mesh_admin_api::ErrorBody {
            error: e.to_string(),
        })
        .unwrap_or_default(),
    }
}

/// `GET /api/v1/events`.
pub(super) async fn stream(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    axum::Extension(live): axum::Extension<Live>,
) -> Response {
    let mut ticks = live.inner.ticks.subscribe();
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(32);
    let mut shutdown = state.shutdown.clone();
    let first = [
        (
            "hello",
            to_json(&api::events::Hello {
                role: caller.role,
                interval_seconds: TICK.as_secs_f64(),
                at: unix_now(),
            }),
        ),
        ("summary", {
            let s = api::events::FleetSummary {
                at: Some(unix_now()),
                ..fleet_summary(&state.xds.sidecars())
            };
            to_json(&s)
        }),
    ];
    tokio::spawn(async move {
        for (name, data) in first {
            if tx.send(Ok(event(name, &data))).await.is_err() {
                return;
            }
        }
        loop {
            let events = tokio::select! {
                tick = ticks.recv() => match tick {
                    Ok(tick) => tick.events.iter().map(|(n, d)| event(n, d)).collect(),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let changed = usize::try_from(n).unwrap_or(usize::MAX);
                        vec![event("sidecars", &resync(changed).to_string())]
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = tx.closed() => return,
            };
            for e in events {
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut response = Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // A reverse proxy must pass the events on as they come.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}

fn event(name: &str, data: &str) -> Event {
    Event::default().event(name).data(data)
}

/// Unix time in seconds, with a fraction.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

// The lock is never held across an await, and a panic cannot leave the history half-written.
fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::stream::TypeStatus;
    use serde_json::json;

    fn sidecar(id: &str, state: SyncState) -> SidecarStatus {
        SidecarStatus {
            id: id.into(),
            identity: "spiffe://cluster.local/ns/a/sa/web".into(),
            namespace: "a".into(),
            service: "web".into(),
            workload: "web-0".into(),
            inbound_address: String::new(),
            admin_address: String::new(),
            proxy_version: String::new(),
            labels: Default::default(),
            rollout_bucket: 0,
            remote: String::new(),
            control_plane: String::new(),
            connected_at: 1,
            last_seen: 1,
            tls: Vec::new(),
            types: vec![TypeStatus {
                type_url: "type.mesh.v1/Cluster".into(),
                state,
                sent_version: "v1".into(),
                acked_version: "v1".into(),
                last_nonce: "1".into(),
                nack: (state == SyncState::Nacked).then(|| "bad".to_string()),
            }],
        }
    }

    fn ids(delta: &Value) -> Vec<&str> {
        delta["upserted"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s["id"].as_str()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn deltas_carry_only_what_changed() {
        let expiry = HashMap::new();
        let mut watch = FleetWatch::default();
        let mut fleet: Vec<SidecarStatus> = (0..5)
            .map(|i| sidecar(&format!("s{i}"), SyncState::Synced))
            .collect();
        // The first look: nothing to compare with.
        let first = watch.delta(&fleet, &expiry).unwrap();
        assert_eq!(first["resync"], true);
        // Nothing changed: nothing to send.
        assert_eq!(watch.delta(&fleet, &expiry), None);
        // One NACKs, one leaves, one comes.
        fleet[2] = sidecar("s2", SyncState::Nacked);
        fleet.remove(4);
        fleet.push(sidecar("s9", SyncState::Stale));
        let delta = watch.delta(&fleet, &expiry).unwrap();
        assert_eq!(ids(&delta), ["s2", "s9"]);
        assert_eq!(delta["upserted"][0]["state"], "NACKED");
        assert_eq!(delta["removed"], json!(["s4"]));
        // An expiry that became known is a change too.
        let held = super::super::sidecars::HeldCert {
            serial_hex: "0a1b".into(),
            not_after: 99,
        };
        let expiry: HashMap<_, _> = [(fleet[0].identity.clone(), held)].into();
        let delta = watch.delta(&fleet, &expiry).unwrap();
        assert_eq!(ids(&delta).len(), fleet.len());
        assert_eq!(delta["upserted"][0]["cert_expires_at"], 99);
        assert_eq!(delta["upserted"][0]["cert_serial"], "0a1b");
    }

    #[test]
    fn a_burst_of_changes_is_a_resync() {
        let expiry = HashMap::new();
        let mut watch = FleetWatch::default();
        let fleet: Vec<SidecarStatus> = (0..=MAX_DELTA)
            .map(|i| sidecar(&format!("s{i:04}"), SyncState::Synced))
            .collect();
        watch.delta(&[], &expiry);
        let delta = watch.delta(&fleet, &expiry).unwrap();
        assert_eq!(delta, json!({ "resync": true, "changed": MAX_DELTA + 1 }));
    }

    #[test]
    fn the_summary_counts_and_lists_nacks() {
        let fleet = vec![
            sidecar("a", SyncState::Synced),
            sidecar("b", SyncState::Nacked),
            sidecar("c", SyncState::Stale),
        ];
        let s = summary(&fleet);
        assert_eq!(s["total"], 3);
        assert_eq!(
            s["counts"],
            json!({ "SYNCED": 1, "STALE": 1, "NACKED": 1, "CONNECTING": 0 })
        );
        assert_eq!(
            s["nacks"],
            json!([{ "id": "b", "type_url": "type.mesh.v1/Cluster", "nack": "bad" }])
        );
    }
}
