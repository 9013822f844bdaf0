//! `GET /api/v1/tls`: the TLS policies in force and what the fleet actually negotiates — open
//! connections and handshakes by direction, version, cipher suite and key-exchange group,
//! summed over the sidecars' latest reports — so an operator can see that nothing still uses
//! an old setting before enforcing a new one.

use super::AdminState;
use crate::model::Selector;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub(super) async fn inventory(State(state): State<AdminState>) -> Json<Value> {
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
    let negotiated: Vec<Value> = sums
        .into_iter()
        .map(|((direction, version, cipher_suite, group), s)| {
            json!({
                "direction": direction,
                "version": version,
                "cipher_suite": cipher_suite,
                "group": group,
                "open_connections": s.open,
                "handshakes": s.handshakes,
                "sidecars": s.sidecars,
            })
        })
        .collect();
    let policies: Vec<Value> = state
        .documents
        .current()
        .tls_policies()
        .map(|p| {
            json!({
                "namespace": p.namespace,
                "name": p.name,
                "selector": match &p.selector {
                    Selector::All => json!(null),
                    Selector::MatchLabels(l) => json!(l),
                    Selector::Service(s) => json!({ "service": s }),
                },
                "min_version": p.min_version.as_str(),
                "max_version": p.max_version.as_str(),
                "cipher_suites": p.cipher_suites.iter().map(|c| c.name()).collect::<Vec<_>>(),
                "key_exchange_groups":
                    p.key_exchange_groups.iter().map(|g| g.name()).collect::<Vec<_>>(),
                "inbound_mode": format!("{:?}", p.inbound_mode).to_uppercase(),
                "drain_grace_period_secs": p.drain_grace_period.as_secs(),
                "rollout_percent": p.rollout_percent,
            })
        })
        .collect();
    // A change pushed through an interim policy that accepts the old and new settings.
    let bridge = state.xds.bridge_waiting().map(|(since, waiting)| {
        json!({ "waiting_sidecars": waiting, "for_secs": since.elapsed().as_secs() })
    });
    Json(json!({
        "policies": policies,
        "bridge": bridge,
        "sidecars": sidecars.len(),
        "reporting": reporting,
        "negotiated": negotiated,
    }))
}
