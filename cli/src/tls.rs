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
    #[arg(long, value_delimiter = ',', value_name = "KEY=VALUE,…")]
    selector: Vec<String>,
    /// Stage the policy on a share of the sidecars (e.g. 10%), chosen by a stable hash of each
    /// sidecar's id; raising it later only adds sidecars. With --selector: a share of those.
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    stage: Option<u8>,
    /// How long connections made under the previous policy may finish (e.g. 30s).
    #[arg(long, value_name = "DURATION")]
    drain_grace: Option<String>,
    /// The TlsPolicy's name (default: mesh-tls, or mesh-tls-stage when staged).
    #[arg(long)]
    name: Option<String>,
}

/// The staged policy's name, and the mesh-wide one's.
const STAGE: &str = "mesh-tls-stage";
const MESH_WIDE: &str = "mesh-tls";

/// `10%` or `10` → 10 (1–100).
fn parse_percent(s: &str) -> Result<u8, String> {
    match s.trim_end_matches('%').parse::<u8>() {
        Ok(p @ 1..=100) => Ok(p),
        _ => Err(format!(
            "expected a share of the fleet from 1% to 100%, e.g. 10% (got {s:?})"
        )),
    }
}

/// `meshctl tls set`: applies a TlsPolicy in the root namespace. meshd pushes a change that
/// shares nothing with what the sidecars run through a policy accepting both (see `meshctl tls
/// status`), whatever applied it.
pub async fn set(args: &SetArgs, format: Format, api: Client) -> Result<(), Failure> {
    let staged = !args.selector.is_empty() || args.stage.is_some();
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| if staged { STAGE } else { MESH_WIDE }.into());
    // What is set already stays (one policy per workload applies): the flags change only what
    // they name. A new stage starts from the mesh-wide settings, so that it tries exactly the
    // change, and setting that change mesh-wide later makes the stage redundant.
    let mut spec = match stored_spec(&api, &name).await? {
        Some(spec) => spec,
        None if staged => {
            let mut base = stored_spec(&api, MESH_WIDE).await?.unwrap_or_default();
            base.remove("selector");
            base.remove("rolloutPercent");
            base
        }
        None => Spec::new(),
    };

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
    if let Some(p) = args.stage {
        spec.insert("rolloutPercent".into(), json!(p));
    }
    let nothing = args.min_version.is_none()
        && args.max_version.is_none()
        && args.ciphers.is_empty()
        && args.groups.is_empty()
        && args.drain_grace.is_none()
        && args.stage.is_none();
    if nothing {
        return Err(Failure::new(
            EXIT_USAGE,
            "say what to set: --min-version, --max-version, --ciphers, --groups or --stage; e.g. meshctl tls set --min-version 1.3",
        ));
    }
    let response = api
        .post("/api/v1/documents", &json!([document(&name, &spec)]))
        .await?;
    // The rest of the fleet now has what the stage tried: the stage has served its purpose.
    let promoted = !staged
        && args.name.is_none()
        && stored_spec(&api, STAGE)
            .await?
            .is_some_and(|stage| settings(&stage) == settings(&spec));
    if promoted {
        api.delete(&format!(
            "/api/v1/documents/TlsPolicy/{ROOT_NAMESPACE}/{STAGE}"
        ))
        .await?;
    }
    output::emit(format, &response, |r| {
        for r in r["results"].as_array().into_iter().flatten() {
            say!(
                "{}",
                output::outcome("TlsPolicy", &text(&r["name"]), &text(&r["outcome"]), None)
            );
        }
        if promoted {
            say!(
                "{}",
                output::outcome("TlsPolicy", STAGE, "deleted", Some("now mesh-wide"))
            );
        }
        note!("follow the rollout with `meshctl tls status`");
    })
}

type Spec = serde_json::Map<String, Value>;

/// The stored spec of a TlsPolicy in the root namespace, `None` when there is none.
async fn stored_spec(api: &Client, name: &str) -> Result<Option<Spec>, Failure> {
    let (code, existing) = api
        .probe(&format!(
            "/api/v1/documents/TlsPolicy/{ROOT_NAMESPACE}/{name}"
        ))
        .await?;
    Ok(match existing["document"]["spec"].as_object() {
        Some(spec) if code == 200 => Some(spec.clone()),
        _ => None,
    })
}

/// What a policy sets for the handshakes, without whom it is staged on or how it drains.
fn settings(spec: &Spec) -> Spec {
    const KEYS: [&str; 5] = [
        "minVersion",
        "maxVersion",
        "cipherSuites",
        "keyExchangeGroups",
        "inboundMode",
    ];
    spec.iter()
        .filter(|(k, _)| KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn document(name: &str, spec: &Spec) -> Value {
    json!({
        "apiVersion": "mesh.meshd.dev/v1alpha1",
        "kind": "TlsPolicy",
        "metadata": { "name": name, "namespace": ROOT_NAMESPACE },
        "spec": spec,
    })
}

/// `meshctl tls status`: policies, then the negotiated inventory.
pub async fn status(format: Format, api: Client) -> Result<(), Failure> {
    let inventory = api.get("/api/v1/tls").await?;
    output::emit(format, &inventory, |inv| {
        let mut policies = Table::new(&[
            "POLICY", "SELECTOR", "STAGE", "MIN", "MAX", "CIPHERS", "GROUPS", "MODE",
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
                match p["rollout_percent"].as_u64() {
                    Some(pct) => format!("{pct}%"),
                    None => "-".into(),
                },
                text(&p["min_version"]),
                text(&p["max_version"]),
                list(&p["cipher_suites"]),
                list(&p["key_exchange_groups"]),
                text(&p["inbound_mode"]),
            ]);
        }
        if policies.is_empty() {
            say!("no TlsPolicy: TLS 1.2 and 1.3 with the provider's defaults");
        } else {
            policies.print();
        }
        if let Some(b) = inv["bridge"].as_object() {
            say!(
                "a change that shares nothing with the running policy is bridged: both settings \
                 accepted until every sidecar ACKed ({} still to ACK, for {}s)",
                b["waiting_sidecars"],
                b["for_secs"]
            );
        }
        say!();
        say!(
            "{} of {} sidecars reported what they negotiate:",
            inv["reporting"],
            inv["sidecars"]
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

    #[test]
    fn a_stage_is_a_share_from_1_to_100_percent() {
        assert_eq!(parse_percent("10%"), Ok(10));
        assert_eq!(parse_percent("100"), Ok(100));
        for bad in ["0%", "101%", "ten", "-5%", ""] {
            let e = parse_percent(bad).unwrap_err();
            assert!(e.contains("e.g. 10%") && e.contains(bad), "{e}");
        }
    }
}
