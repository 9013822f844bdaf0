//! `GET /api/v1/tls`: the TLS policies in force and what the fleet actually negotiates — open
//! connections and handshakes by direction, version, cipher suite and key-exchange group,
//! summed over the sidecars' latest reports — so an operator can see that nothing still uses
//! an old setting before enforcing a new one; and per policy, how many sidecars it covers and
//! how many of those ACKed it (`meshctl tls set --wait`).

use super::AdminState;
use crate::model::{Selector, WorkloadRef};
use crate::xds::stream::SyncState;
use axum::Json;
use axum::extract::State;
use mesh_admin_api as api;
use std::collections::BTreeMap;

/// One connected sidecar, as far as TLS policies go.
struct Coverage {
    namespace: String,
    labels: BTreeMap<String, String>,
    bucket: u8,
    /// `namespace/name` of the TlsPolicy in effect on it.
    in_effect: Option<String>,
    /// Every type SYNCED: it ACKed what meshd sent it, the policy included.
    acked: bool,
}

/// Per policy: `covers` (the sidecars it is in effect on), `acked` (of those, the ones that
/// ACKed everything sent to them), `selected` and `selected_buckets` (the sidecars its
/// selector picks before its share, and their rollout buckets: a stage of P % covers those
/// below P).
pub(super) async fn inventory(State(state): State<AdminState>) -> Json<api::TlsInventory> {
    #[derive(Default)]
    struct Sum {
        open: u64,
        handshakes: u64,
        sidecars: u64,
    }
    let sidecars = state.xds.sidecars();
    let mut sums: BTreeMap<(String, String, String, String), Sum> = BTreeMap::new();
    let mut reporting = 0;
    for s in &sidecars {
        if !s.tls.is_empty() {
            reporting += 1;
        }
        for t in &s.tls {
            let sum = sums
                .entry((
                    t.direction.clone(),
                    t.version.clone(),
                    t.cipher_suite.clone(),
                    t.group.clone(),
                ))
                .or_default();
            sum.open += t.open_connections;
            sum.handshakes += t.handshakes;
            sum.sidecars += 1;
        }
    }
    let negotiated = sums
        .into_iter()
        .map(
            |((direction, version, cipher_suite, group), s)| api::NegotiatedSum {
                direction,
                version,
                cipher_suite,
                group,
                open_connections: s.open,
                handshakes: s.handshakes,
                sidecars: s.sidecars,
            },
        )
        .collect();
    // Which policy is in effect on each connected sidecar (at most one), and whether the
    // sidecar ACKed everything meshd sent it (so it runs that policy).
    let mesh = state.documents.current();
    let coverage: Vec<Coverage> = sidecars
        .iter()
        .map(|s| {
            let rollouts = mesh.rollouts_for(&s.namespace, &s.labels, s.rollout_bucket);
            let w = WorkloadRef {
                namespace: &s.namespace,
                labels: &s.labels,
                rollouts: &rollouts,
            };
            Coverage {
                namespace: s.namespace.clone(),
                labels: s.labels.clone(),
                bucket: s.rollout_bucket,
                in_effect: mesh.tls_policy_for(w).map(|p| p.key()),
                acked: !s.types.is_empty() && s.types.iter().all(|t| t.state == SyncState::Synced),
            }
        })
        .collect();
    let policies = mesh
        .tls_policies()
        .map(|p| {
            let key = p.key();
            let covered: Vec<&Coverage> = coverage
                .iter()
                .filter(|c| c.in_effect.as_ref() == Some(&key))
                .collect();
            // The sidecars its selector picks, before its share (`rolloutPercent`) is applied:
            // their buckets say why a stage covers none of them.
            let none = std::collections::BTreeSet::new();
            let mut selected_buckets: Vec<u8> = coverage
                .iter()
                .filter(|c| {
                    let w = WorkloadRef {
                        namespace: &c.namespace,
                        labels: &c.labels,
                        rollouts: &none,
                    };
                    mesh.selects(&p.namespace, &p.selector, w)
                })
                .map(|c| c.bucket)
                .collect();
            selected_buckets.sort_unstable();
            api::TlsPolicyStatus {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                selector: match &p.selector {
                    Selector::All => None,
                    Selector::MatchLabels(l) => Some(api::TlsSelector::MatchLabels(
                        l.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    )),
                    Selector::Service(s) => Some(api::TlsSelector::Service { service: s.clone() }),
                },
                min_version: p.min_version.as_str().into(),
                max_version: p.max_version.as_str().into(),
                cipher_suites: p.cipher_suites.iter().map(|c| c.name().into()).collect(),
                key_exchange_groups: p
                    .key_exchange_groups
                    .iter()
                    .map(|g| g.name().into())
                    .collect(),
                inbound_mode: format!("{:?}", p.inbound_mode).to_uppercase(),
                drain_grace_period_secs: p.drain_grace_period.as_secs(),
                rollout_percent: p.rollout_percent,
                covers: covered.len(),
                acked: covered.iter().filter(|c| c.acked).count(),
                selected: selected_buckets.len(),
                selected_buckets,
            }
        })
        .collect();
    // A change pushed through an interim policy that accepts the old and new settings.
    let bridge = state
        .xds
        .bridge_waiting()
        .map(|(since, waiting)| api::TlsBridge {
            waiting_sidecars: waiting,
            for_secs: since.elapsed().as_secs(),
        });
    Json(api::TlsInventory {
        policies,
        bridge,
        sidecars: sidecars.len(),
        reporting,
        negotiated,
    })
}
