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
    let mut spec = match existing["document"]["spec"].as_object() {
        Some(spec) if code == 200 => spec.clone(),
        _ => serde_json::Map::new(),
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
    let doc = json!({
        "apiVersion": "mesh.meshd.dev/v1alpha1",
        "kind": "TlsPolicy",
        "metadata": { "name": name, "namespace": ROOT_NAMESPACE },
        "spec": spec,
    });
    let response = api.post("/api/v1/documents", &json!([doc])).await?;
    output::emit(format, &response, |r| {
        for r in r["results"].as_array().into_iter().flatten() {
            println!("tlspolicy/{} {}", text(&r["name"]), text(&r["outcome"]));
        }
        eprintln!("follow the rollout with `meshctl tls status`");
    })
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
