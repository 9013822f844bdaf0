//! `meshctl tls set` (a TlsPolicy, mesh-wide or staged on a label selector first) and
//! `meshctl tls status` (the policies in force and what the fleet actually negotiates).

use crate::admin::Client;
use crate::output::{self, Format, Table, text};
use crate::{EXIT_USAGE, Failure};
use serde_json::{Value, json};

/// The namespace whose policies apply to every namespace.
const ROOT_NAMESPACE: &str = "mesh-system";

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// Lowest TLS version accepted: 1.2 or 1.3.
    #[arg(long, value_name = "VERSION")]
    min_version: Option<String>,
    /// Highest TLS version offered: 1.2 or 1.3.
    #[arg(long, value_name = "VERSION")]
    max_version: Option<String>,
    /// Cipher suites in order of preference (comma-separated IANA names), e.g.
    /// TLS13_AES_256_GCM_SHA384.
    #[arg(long, value_delimiter = ',', value_name = "SUITE,…")]
    ciphers: Vec<String>,
    /// Key-exchange groups in order of preference (comma-separated), e.g.
    /// X25519MLKEM768,X25519.
    #[arg(long, value_delimiter = ',', value_name = "GROUP,…")]
    groups: Vec<String>,
    /// Stage the policy: only workloads with these labels (KEY=VALUE, comma-separated) get it.
    /// Without it, the policy is mesh-wide.
    #[arg(long, value_delimiter = ',', value_name = "KEY=VALUE,…")]
    selector: Vec<String>,
    /// How long connections made under the previous policy may finish (e.g. 30s).
    #[arg(long, value_name = "DURATION")]
    drain_grace: Option<String>,
    /// The TlsPolicy's name (default: mesh-tls, or mesh-tls-stage with --selector).
    #[arg(long)]
    name: Option<String>,
}

/// `meshctl tls set`: applies a TlsPolicy in the root namespace.
pub async fn set(args: &SetArgs, format: Format, api: Client) -> Result<(), Failure> {
    let name = args.name.clone().unwrap_or_else(|| {
        if args.selector.is_empty() {
            "mesh-tls".into()
        } else {
            "mesh-tls-stage".into()
        }
    });
    // What is set already stays (one policy per workload applies): the flags change only what
    // they name.
    let (code, existing) = api
        .probe(&format!(
            "/api/v1/documents/TlsPolicy/{ROOT_NAMESPACE}/{name}"
        ))
        .await?;
    let old = match existing["document"]["spec"].as_object() {
        Some(spec) if code == 200 => spec.clone(),
        _ => serde_json::Map::new(),
    };
    let mut spec = old.clone();

    if let Some(v) = &args.min_version {
        spec.insert("minVersion".into(), json!(v));
    }
    if let Some(v) = &args.max_version {
        spec.insert("maxVersion".into(), json!(v));
    }
    if !args.ciphers.is_empty() {
        spec.insert("cipherSuites".into(), json!(args.ciphers));
    }
    if !args.groups.is_empty() {
        spec.insert("keyExchangeGroups".into(), json!(args.groups));
    }
    if let Some(d) = &args.drain_grace {
        spec.insert("drainGracePeriod".into(), json!(d));
    }
    if !args.selector.is_empty() {
        let mut labels = serde_json::Map::new();
        for kv in &args.selector {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(Failure::new(
                    EXIT_USAGE,
                    format!("--selector {kv:?}: expected KEY=VALUE, e.g. --selector tier=canary"),
                ));
            };
            labels.insert(k.into(), json!(v));
        }
        spec.insert("selector".into(), json!({ "matchLabels": labels }));
    }
    let nothing = args.min_version.is_none()
        && args.max_version.is_none()
        && args.ciphers.is_empty()
        && args.groups.is_empty()
        && args.drain_grace.is_none();
    if nothing {
        return Err(Failure::new(
            EXIT_USAGE,
            "say what to set: --min-version, --max-version, --ciphers or --groups; e.g. meshctl tls set --min-version 1.3",
        ));
    }
    // A change that shares no version, suite or group with what the fleet runs cannot be
    // pushed in one step: while some sidecars have it and others not, their handshakes fail.
    // So: first a policy that accepts both, wait until every sidecar holds it, then the change.
    if let Some(interim) = bridge(&old, &spec) {
        eprintln!(
            "step 1/2: the new setting shares nothing with the current one; first accepting both"
        );
        let before = policy_versions(&api).await?;
        api.post("/api/v1/documents", &json!([document(&name, &interim)]))
            .await?;
        let n = wait_policy_acked(&api, &before).await?;
        eprintln!("step 2/2: all {n} sidecars accept both; now the new setting alone");
    }
    let response = api
        .post("/api/v1/documents", &json!([document(&name, &spec)]))
        .await?;
    output::emit(format, &response, |r| {
        for r in r["results"].as_array().into_iter().flatten() {
            println!("tlspolicy/{} {}", text(&r["name"]), text(&r["outcome"]));
        }
        eprintln!("follow the rollout with `meshctl tls status`");
    })
}

type Spec = serde_json::Map<String, Value>;

fn document(name: &str, spec: &Spec) -> Value {
    json!({
        "apiVersion": "mesh.meshd.dev/v1alpha1",
        "kind": "TlsPolicy",
        "metadata": { "name": name, "namespace": ROOT_NAMESPACE },
        "spec": spec,
    })
}

/// When `old` and `new` share no TLS version, no cipher suite or no key-exchange group, the
/// interim spec that accepts both (the new ones preferred); `None` when one step is safe. An
/// empty list means the provider's defaults, which overlap any explicit choice.
fn bridge(old: &Spec, new: &Spec) -> Option<Spec> {
    let list = |m: &Spec, key: &str| -> Vec<String> {
        m.get(key)
            .and_then(Value::as_array)
            .map(|v| {
                v.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut interim = new.clone();
    let mut needed = false;
    for key in ["cipherSuites", "keyExchangeGroups"] {
        let (o, n) = (list(old, key), list(new, key));
        if !o.is_empty() && !n.is_empty() && !o.iter().any(|x| n.contains(x)) {
            let mut union = n.clone();
            union.extend(o.into_iter().filter(|x| !n.contains(x)));
            interim.insert(key.into(), json!(union));
            needed = true;
        }
    }
    let version = |m: &Spec, key: &str, default: &str| -> String {
        match m.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => default.to_string(),
        }
    };
    let (old_min, old_max) = (
        version(old, "minVersion", "1.2"),
        version(old, "maxVersion", "1.3"),
    );
    let (new_min, new_max) = (
        version(new, "minVersion", "1.2"),
        version(new, "maxVersion", "1.3"),
    );
    if old_max < new_min || new_max < old_min {
        interim.insert("minVersion".into(), json!(old_min.min(new_min)));
        interim.insert("maxVersion".into(), json!(old_max.max(new_max)));
        needed = true;
    }
    needed.then_some(interim)
}

/// Each connected sidecar's acknowledged TlsPolicy version.
async fn policy_versions(
    api: &Client,
) -> Result<std::collections::BTreeMap<String, String>, Failure> {
    let all = api.get("/api/v1/sidecars").await?;
    Ok(all["sidecars"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let acked = s["types"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["type_url"] == mesh_proto::TLS_POLICY_TYPE_URL)
                .map(|t| text(&t["acked_version"]))
                .unwrap_or_default();
            (text(&s["id"]), acked)
        })
        .collect())
}

/// Waits until every sidecar ACKed a TlsPolicy version other than the one it held `before`
/// (new sidecars count once they ACKed any); returns how many there are.
async fn wait_policy_acked(
    api: &Client,
    before: &std::collections::BTreeMap<String, String>,
) -> Result<usize, Failure> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let now = policy_versions(api).await?;
        let waiting: Vec<&String> = now
            .iter()
            .filter(|(id, v)| v.is_empty() || before.get(*id) == Some(*v))
            .map(|(id, _)| id)
            .collect();
        if waiting.is_empty() {
            return Ok(now.len());
        }
        if std::time::Instant::now() > deadline {
            return Err(Failure::new(
                crate::EXIT_FAILURE,
                format!(
                    "{} sidecar(s) did not take the interim policy within 5 minutes (e.g. {}); \
                     the change was not applied: see `meshctl status`",
                    waiting.len(),
                    waiting
                        .iter()
                        .take(3)
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// `meshctl tls status`: policies, then the negotiated inventory.
pub async fn status(format: Format, api: Client) -> Result<(), Failure> {
    let inventory = api.get("/api/v1/tls").await?;
    output::emit(format, &inventory, |inv| {
        let mut policies = Table::new(&[
            "POLICY", "SELECTOR", "MIN", "MAX", "CIPHERS", "GROUPS", "MODE",
        ]);
        for p in inv["policies"].as_array().into_iter().flatten() {
            let list = |v: &Value| {
                let items: Vec<&str> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if items.is_empty() {
                    "(default)".to_string()
                } else {
                    items.join(",")
                }
            };
            policies.row(vec![
                format!("{}/{}", text(&p["namespace"]), text(&p["name"])),
                if p["selector"].is_null() {
                    "(all)".into()
                } else {
                    p["selector"].to_string()
                },
                text(&p["min_version"]),
                text(&p["max_version"]),
                list(&p["cipher_suites"]),
                list(&p["key_exchange_groups"]),
                text(&p["inbound_mode"]),
            ]);
        }
        if policies.is_empty() {
            println!("no TlsPolicy: TLS 1.2 and 1.3 with the provider's defaults");
        } else {
            policies.print();
        }
        println!();
        println!(
            "{} of {} sidecars reported what they negotiate:",
            inv["reporting"], inv["sidecars"]
        );
        let mut table = Table::new(&[
            "DIRECTION",
            "VERSION",
            "CIPHER SUITE",
            "GROUP",
            "OPEN",
            "HANDSHAKES",
            "SIDECARS",
        ]);
        for n in inv["negotiated"].as_array().into_iter().flatten() {
            table.row(vec![
                text(&n["direction"]),
                text(&n["version"]),
                text(&n["cipher_suite"]),
                text(&n["group"]),
                text(&n["open_connections"]),
                text(&n["handshakes"]),
                text(&n["sidecars"]),
            ]);
        }
        table.print();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> Spec {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_disjoint_change_is_bridged_and_an_overlapping_one_is_not() {
        // Groups with nothing in common: accept both first, the new one preferred.
        let interim = bridge(
            &spec(json!({"keyExchangeGroups": ["X25519MLKEM768"]})),
            &spec(json!({"keyExchangeGroups": ["X25519"]})),
        )
        .expect("disjoint groups need a bridge");
        assert_eq!(
            interim["keyExchangeGroups"],
            json!(["X25519", "X25519MLKEM768"])
        );
        // TLS 1.2 only → TLS 1.3 only: both versions meanwhile.
        let interim = bridge(
            &spec(json!({"maxVersion": "1.2"})),
            &spec(json!({"minVersion": "1.3", "maxVersion": "1.3"})),
        )
        .expect("disjoint versions need a bridge");
        assert_eq!(interim["minVersion"], "1.2");
        assert_eq!(interim["maxVersion"], "1.3");
        // Overlaps, and the provider's defaults (an empty list), go in one step.
        for (old, new) in [
            (
                json!({"keyExchangeGroups": ["X25519", "secp256r1"]}),
                json!({"keyExchangeGroups": ["X25519"]}),
            ),
            (
                json!({}),
                json!({"cipherSuites": ["TLS13_CHACHA20_POLY1305_SHA256"], "minVersion": "1.3"}),
            ),
            (
                json!({"cipherSuites": ["TLS13_AES_128_GCM_SHA256"]}),
                json!({}),
            ),
        ] {
            assert_eq!(
                bridge(&spec(old.clone()), &spec(new.clone())),
                None,
                "{old} → {new}"
            );
        }
    }
}
