//! The server side of one discovery stream as a state machine, without I/O: requests and new
//! snapshots go in, responses and status changes come out. The rules are those of
//! `proto/mesh/v1/discovery.proto`; the section numbers below refer to it.

use super::snapshot::Snapshot;
use mesh_proto::ResourceType;
use mesh_proto::v1::{ControlPlane, DiscoveryRequest, DiscoveryResponse};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Sync state of one (sidecar, type), section 6, and what the server knows of one type on one
/// stream: the admin API's types.
pub use mesh_admin_api::{SyncState, TypeStatus};

#[derive(Debug, Default)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
}

impl Subscription {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

#[derive(Debug, Default)]
struct TypeState {
    subscription: Subscription,
    /// What the sidecar holds, as far as the server knows: name → version.
    holds: BTreeMap<String, String>,
    /// Names subscribed by name that do not exist and were already reported removed.
    reported_missing: BTreeSet<String>,
    /// The newest response sent: its nonce number and type version.
    last_sent: Option<(u64, String)>,
    acked_version: String,
    /// The newest response was ACKed.
    last_acked: bool,
    /// Latest NACK text, and the nonce number current when it arrived: only the ACK of a
    /// response sent after it clears it.
    nack: Option<(String, u64)>,
}

/// One response in flight, remembered until it is answered.
#[derive(Debug)]
struct Pending {
    ty: ResourceType,
    sent: Vec<(String, String)>,
    /// The change this response pushes; `None` for a response to a (re)subscription, whose
    /// latency is the sidecar's connect time, not a push latency.
    changed_at: Option<Instant>,
}

/// What a request produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub responses: Vec<DiscoveryResponse>,
    /// Change → ACK latency, for each ACK of a newest response.
    pub acked: Vec<(ResourceType, Duration)>,
    pub nacked: Vec<(ResourceType, String)>,
}

/// A protocol violation: the stream ends with `INVALID_ARGUMENT` and this text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

pub struct StreamState {
    types: BTreeMap<ResourceType, TypeState>,
    pending: HashMap<u64, Pending>,
    next_nonce: u64,
    control_plane: ControlPlane,
}

// === impl StreamState ===

impl StreamState {
    pub fn new(control_plane: ControlPlane) -> Self {
        Self {
            types: BTreeMap::new(),
            pending: HashMap::new(),
            next_nonce: 0,
            control_plane,
        }
    }

    /// Handles one request from the sidecar against the scope's current snapshot.
    pub fn on_request(
        &mut self,
        request: &DiscoveryRequest,
        snapshot: &Snapshot,
    ) -> Result<Outcome, ProtocolError> {
        let mut outcome = Outcome::default();
        let Some(ty) = ResourceType::from_type_url(&request.type_url) else {
            if request.response_nonce.is_empty() {
                // Section 3: an unknown type gets an empty response, so newer sidecars work.
                tracing::debug!(type_url = %request.type_url, "subscription to an unknown type");
                self.next_nonce += 1;
                let nonce = self.next_nonce;
                outcome.responses.push(self.response(
                    &request.type_url,
                    nonce,
                    Vec::new(),
                    Vec::new(),
                ));
            }
            return Ok(outcome);
        };
        if request.response_nonce.is_empty() {
            if request.error_detail.is_some() {
                return Err(ProtocolError("error_detail without response_nonce".into()));
            }
        } else {
            self.on_answer(ty, request, &mut outcome);
        }

        let first = !self.types.contains_key(&ty);
        let state = self.types.entry(ty).or_default();
        if first {
            state.subscription.wildcard = request.resource_names_subscribe.is_empty();
            state.holds = request
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        let mut changed_subscription = false;
        for name in &request.resource_names_subscribe {
            changed_subscription = true;
            if name == "*" {
                state.subscription.wildcard = true;
            } else {
                state.subscription.names.insert(name.clone());
            }
        }
        for name in &request.resource_names_unsubscribe {
            changed_subscription = true;
            if name == "*" {
                state.subscription.wildcard = false;
            } else {
                state.subscription.names.remove(name);
            }
            state.reported_missing.remove(name);
        }
        if (first || changed_subscription)
            && let Some(response) = self.diff(ty, snapshot, first)
        {
            outcome.responses.push(response);
        }
        Ok(outcome)
    }

    fn on_answer(&mut self, ty: ResourceType, request: &DiscoveryRequest, outcome: &mut Outcome) {
        let Some(nonce) = request.response_nonce.parse::<u64>().ok() else {
            return;
        };
        let Some(pending) = self.pending.remove(&nonce) else {
            return; // Section 5: a nonce we never sent (or already answered) is ignored.
        };
        if pending.ty != ty {
            return;
        }
        let newest = self.next_nonce;
        let Some(state) = self.types.get_mut(&ty) else {
            return;
        };
        match &request.error_detail {
            Some(status) => {
                // Forget what that response sent, unless a later one carried it again.
                for (name, version) in &pending.sent {
                    if state.holds.get(name) == Some(version)
                        && !self.pending.values().any(|p| {
                            p.ty == ty && p.sent.iter().any(|(n, v)| n == name && v == version)
                        })
                    {
                        state.holds.remove(name);
                    }
                }
                state.nack = Some((status.message.clone(), newest));
                state.last_acked = false;
                outcome.nacked.push((ty, status.message.clone()));
            }
            None => {
                if let Some((_, nack_mark)) = &state.nack
                    && nonce > *nack_mark
                {
                    state.nack = None;
                }
                if let Some((last, version)) = &state.last_sent
                    && *last == nonce
                {
                    state.last_acked = true;
                    state.acked_version = version.clone();
                    if let Some(changed_at) = pending.changed_at {
                        outcome.acked.push((ty, changed_at.elapsed()));
                    }
                }
            }
        }
    }

    /// A new snapshot for the scope: the responses that bring the sidecar up to date.
    pub fn on_snapshot(&mut self, snapshot: &Snapshot) -> Vec<DiscoveryResponse> {
        // A type whose content is what was last sent, with no NACK to answer, has nothing to
        // send: skip its per-resource diff (most types of most pushes).
        let types: Vec<ResourceType> = ResourceType::ALL
            .into_iter()
            .filter(|t| {
                self.types.get(t).is_some_and(|s| {
                    s.nack.is_some()
                        || s.last_sent
                            .as_ref()
                            .is_none_or(|(_, v)| *v != snapshot.type_version(*t))
                })
            })
            .collect();
        types
            .into_iter()
            .filter_map(|t| self.diff(t, snapshot, false))
            .collect()
    }

    /// The response for `ty` that takes the sidecar from what it holds to `snapshot`, or None
    /// when nothing differs (unless `always`).
    fn diff(
        &mut self,
        ty: ResourceType,
        snapshot: &Snapshot,
        always: bool,
    ) -> Option<DiscoveryResponse> {
        let state = self.types.get_mut(&ty)?;
        let mut changed = Vec::new();
        let mut wanted: BTreeSet<&str> = BTreeSet::new();
        for resource in snapshot.resources(ty) {
            if !state.subscription.wants(&resource.name) {
                continue;
            }
            wanted.insert(&resource.name);
            if state.holds.get(&resource.name) != Some(&resource.version) {
                changed.push(resource.clone());
            }
        }
        let mut removed: Vec<String> = state
            .holds
            .keys()
            .filter(|n| !wanted.contains(n.as_str()))
            .cloned()
            .collect();
        // Named subscriptions to names that do not exist are answered as removed, once.
        for name in &state.subscription.names {
            if !wanted.contains(name.as_str())
                && !removed.contains(name)
                && state.reported_missing.insert(name.clone())
            {
                removed.push(name.clone());
            }
        }
        if changed.is_empty() && removed.is_empty() && !always {
            return None;
        }
        for r in &changed {
            state.holds.insert(r.name.clone(), r.version.clone());
        }
        for name in &removed {
            state.holds.remove(name);
        }
        self.next_nonce += 1;
        let nonce = self.next_nonce;
        let version = snapshot.type_version(ty);
        state.last_sent = Some((nonce, version.to_string()));
        state.last_acked = false;
        self.pending.insert(
            nonce,
            Pending {
                ty,
                sent: changed
                    .iter()
                    .map(|r| (r.name.clone(), r.version.clone()))
                    .collect(),
                changed_at: (!always).then_some(snapshot.changed_at),
            },
        );
        Some(self.response(ty.type_url(), nonce, changed, removed))
    }

    fn response(
        &self,
        type_url: &str,
        nonce: u64,
        resources: Vec<mesh_proto::v1::Resource>,
        removed: Vec<String>,
    ) -> DiscoveryResponse {
        DiscoveryResponse {
            type_url: type_url.to_string(),
            resources,
            removed_resources: removed,
            nonce: nonce.to_string(),
            system_version_info: String::new(),
            control_plane: Some(self.control_plane.clone()),
        }
    }

    /// The status of every subscribed type. `pending_change` marks a change not sent yet.
    pub fn status(&self, pending_change: bool) -> Vec<TypeStatus> {
        let mut out = Vec::new();
        self.write_status(&mut out, pending_change);
        out
    }

    /// [`StreamState::status`] into `out`, reusing its strings: the stream updates its status
    /// after every request and push, and at 10,000 sidecars a fresh vector each time was a
    /// tenth of meshd's CPU (malloc and free).
    pub fn write_status(&self, out: &mut Vec<TypeStatus>, pending_change: bool) {
        use std::fmt::Write;
        out.truncate(self.types.len());
        for (i, (ty, s)) in self.types.iter().enumerate() {
            if i == out.len() {
                out.push(TypeStatus {
                    type_url: String::new(),
                    state: SyncState::Stale,
                    sent_version: String::new(),
                    acked_version: String::new(),
                    last_nonce: String::new(),
                    nack: None,
                });
            }
            let t = &mut out[i];
            if t.type_url != ty.type_url() {
                t.type_url = ty.type_url().to_string();
            }
            t.state = if s.nack.is_some() {
                SyncState::Nacked
            } else if s.last_acked && !pending_change {
                SyncState::Synced
            } else {
                SyncState::Stale
            };
            t.sent_version.clear();
            t.last_nonce.clear();
            if let Some((nonce, version)) = &s.last_sent {
                t.sent_version.push_str(version);
                let _ = write!(t.last_nonce, "{nonce}");
            }
            t.acked_version.clone_from(&s.acked_version);
            match (&mut t.nack, &s.nack) {
                (Some(held), Some((m, _))) => held.clone_from(m),
                (held, now) => *held = now.as_ref().map(|(m, _)| m.clone()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::v1::resource::Body;
    use mesh_proto::v1::{Cluster, Status, TrustBundle};

    fn snapshot(clusters: &[(&str, u32)]) -> Snapshot {
        let mut s = Snapshot::default();
        for (name, port) in clusters {
            s.insert(Body::Cluster(Cluster {
                name: name.to_string(),
                port: *port,
                ..Default::default()
            }));
        }
        s.insert(Body::TrustBundle(TrustBundle {
            name: "bundle".into(),
            ..Default::default()
        }));
        s
    }

    fn subscribe(ty: ResourceType) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: ty.type_url().into(),
            ..Default::default()
        }
    }

    fn names(r: &DiscoveryResponse) -> Vec<&str> {
        r.resources.iter().map(|r| r.name.as_str()).collect()
    }

    fn stream() -> StreamState {
        StreamState::new(ControlPlane {
            identity: "spiffe://td/ns/mesh-system/sa/meshd".into(),
            replica: "r1".into(),
        })
    }

    #[test]
    fn first_subscription_gets_everything_then_ack_syncs() {
        let snap = snapshot(&[("a", 80), ("b", 81)]);
        let mut s = stream();
        let out = s
            .on_request(&subscribe(ResourceType::Cluster), &snap)
            .unwrap();
        assert_eq!(out.responses.len(), 1);
        let r = &out.responses[0];
        assert_eq!(names(r), vec!["a", "b"]);
        assert_eq!(s.status(false)[0].state, SyncState::Stale);
        let ack = DiscoveryRequest::ack(ResourceType::Cluster.type_url(), r.nonce.clone());
        let out = s.on_request(&ack, &snap).unwrap();
        assert!(out.responses.is_empty());
        assert!(
            out.acked.is_empty(),
            "a first response's ACK is no push latency"
        );
        assert_eq!(s.status(false)[0].state, SyncState::Synced);
        let pushed = s.on_snapshot(&snapshot(&[("a", 80), ("b", 82)]));
        let ack = DiscoveryRequest::ack(ResourceType::Cluster.type_url(), pushed[0].nonce.clone());
        let out = s.on_request(&ack, &snap).unwrap();
        assert_eq!(
            out.acked.len(),
            1,
            "a pushed change's ACK is a push latency"
        );
        assert_eq!(
            s.status(true)[0].state,
            SyncState::Stale,
            "a pending change is STALE"
        );
    }

    #[test]
    fn an_empty_type_still_gets_its_first_response() {
        let mut s = stream();
        let out = s
            .on_request(&subscribe(ResourceType::Listener), &snapshot(&[]))
            .unwrap();
        assert_eq!(out.responses.len(), 1);
        assert!(out.responses[0].resources.is_empty());
        assert!(!out.responses[0].nonce.is_empty());
    }

    #[test]
    fn a_change_sends_only_what_changed_and_removals() {
        let mut s = stream();
        let first = s
            .on_request(
                &subscribe(ResourceType::Cluster),
                &snapshot(&[("a", 80), ("b", 81)]),
            )
            .unwrap();
        s.on_request(
            &DiscoveryRequest::ack(
                ResourceType::Cluster.type_url(),
                first.responses[0].nonce.clone(),
            ),
            &snapshot(&[]),
        )
        .unwrap();
        let next = snapshot(&[("a", 80), ("c", 90)]);
        let out = s.on_snapshot(&next);
        assert_eq!(out.len(), 1);
        assert_eq!(names(&out[0]), vec!["c"]);
        assert_eq!(out[0].removed_resources, vec!["b".to_string()]);
        assert!(s.on_snapshot(&next).is_empty(), "nothing new, nothing sent");
    }

    #[test]
    fn reconnect_with_initial_versions_resends_nothing_unchanged() {
        let snap = snapshot(&[("a", 80), ("b", 81)]);
        let mut versions = std::collections::BTreeMap::new();
        for r in snap.resources(ResourceType::Cluster) {
            versions.insert(r.name.clone(), r.version.clone());
        }
        versions.insert("gone".to_string(), "1234".to_string());
        let mut s = stream();
        let mut req = subscribe(ResourceType::Cluster);
        req.initial_resource_versions = versions;
        let out = s.on_request(&req, &snap).unwrap();
        assert_eq!(out.responses.len(), 1, "the first response is always sent");
        assert!(
            out.responses[0].resources.is_empty(),
            "unchanged resources are not resent"
        );
        assert_eq!(out.responses[0].removed_resources, vec!["gone".to_string()]);
    }

    #[test]
    fn nack_keeps_nacked_until_a_later_response_is_acked() {
        let mut s = stream();
        let ty = ResourceType::Cluster;
        let first = s
            .on_request(&subscribe(ty), &snapshot(&[("a", 80)]))
            .unwrap()
            .responses
            .remove(0);
        let nack = DiscoveryRequest {
            type_url: ty.type_url().into(),
            response_nonce: first.nonce.clone(),
            error_detail: Some(Status {
                code: 3,
                message: "a: bad port".into(),
            }),
            ..Default::default()
        };
        let out = s.on_request(&nack, &snapshot(&[("a", 80)])).unwrap();
        assert_eq!(out.nacked.len(), 1);
        let st = &s.status(false)[0];
        assert_eq!(st.state, SyncState::Nacked);
        assert_eq!(st.nack.as_deref(), Some("a: bad port"));
        // An ACK of the NACKed nonce again changes nothing (it was answered).
        s.on_request(
            &DiscoveryRequest::ack(ty.type_url(), first.nonce.clone()),
            &snapshot(&[]),
        )
        .unwrap();
        assert_eq!(s.status(false)[0].state, SyncState::Nacked);
        // The fix: the forgotten resource is sent again with its new content; its ACK clears.
        let fixed = s.on_snapshot(&snapshot(&[("a", 8080)]));
        assert_eq!(names(&fixed[0]), vec!["a"]);
        s.on_request(
            &DiscoveryRequest::ack(ty.type_url(), fixed[0].nonce.clone()),
            &snapshot(&[]),
        )
        .unwrap();
        assert_eq!(s.status(false)[0].state, SyncState::Synced);
        assert_eq!(s.status(false)[0].nack, None);
    }

    #[test]
    fn an_ack_of_an_older_nonce_does_not_sync() {
        let mut s = stream();
        let ty = ResourceType::Cluster;
        let first = s
            .on_request(&subscribe(ty), &snapshot(&[("a", 80)]))
            .unwrap()
            .responses
            .remove(0);
        let second = s.on_snapshot(&snapshot(&[("a", 81)])).remove(0);
        s.on_request(
            &DiscoveryRequest::ack(ty.type_url(), first.nonce),
            &snapshot(&[]),
        )
        .unwrap();
        assert_eq!(s.status(false)[0].state, SyncState::Stale);
        s.on_request(
            &DiscoveryRequest::ack(ty.type_url(), second.nonce),
            &snapshot(&[]),
        )
        .unwrap();
        assert_eq!(s.status(false)[0].state, SyncState::Synced);
    }

    #[test]
    fn named_subscriptions_and_unknown_types() {
        let mut s = stream();
        let mut req = subscribe(ResourceType::Cluster);
        req.resource_names_subscribe = vec!["b".into(), "missing".into()];
        let out = s
            .on_request(&req, &snapshot(&[("a", 80), ("b", 81)]))
            .unwrap();
        assert_eq!(names(&out.responses[0]), vec!["b"]);
        assert_eq!(
            out.responses[0].removed_resources,
            vec!["missing".to_string()]
        );
        let unknown = DiscoveryRequest {
            type_url: "type.mesh.v9/Future".into(),
            ..Default::default()
        };
        let out = s.on_request(&unknown, &snapshot(&[])).unwrap();
        assert_eq!(out.responses[0].type_url, "type.mesh.v9/Future");
        assert!(out.responses[0].resources.is_empty());
        let bad = DiscoveryRequest {
            type_url: ResourceType::Cluster.type_url().into(),
            error_detail: Some(Status {
                code: 3,
                message: "x".into(),
            }),
            ..Default::default()
        };
        assert!(s.on_request(&bad, &snapshot(&[])).is_err());
    }
}
