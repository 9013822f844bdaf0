//! `meshctl tls set` (a TlsPolicy, mesh-wide or staged on a label selector first) and
//! `meshctl tls status` (the policies in force and what the fleet actually negotiates).

use crate::admin::Client;
use crate::output::{self, Format, Table, text};
use crate::{EXIT_FAILURE, EXIT_USAGE, Failure};
use mesh_admin_api::{ApplyResults, StoredDocument, TlsInventory, TlsPolicyStatus};
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
    /// Wait until every sidecar the policy covers has ACKed it.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits (e.g. 2m).
    #[arg(long, value_name = "DURATION", default_value = "2m", requires = "wait")]
    timeout: String,
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
    let timeout = humantime::parse_duration(&args.timeout).map_err(|e| {
        Failure::new(
            EXIT_USAGE,
            format!("--timeout {:?}: {e}; e.g. --timeout 2m", args.timeout),
        )
    })?;
    let response: ApplyResults = api
        .submit("/api/v1/documents", &json!([document(&name, &spec)]))
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
    let inventory: TlsInventory = api.fetch("/api/v1/tls").await?;
    let policy = policy_of(&inventory, &name);
    output::emit(format, &response, |r| {
        for r in &r.results {
            say!(
                "{}",
                output::outcome("TlsPolicy", &r.key.name, r.outcome.as_str(), None)
            );
        }
        if promoted {
            say!(
                "{}",
                output::outcome("TlsPolicy", STAGE, "deleted", Some("now mesh-wide"))
            );
        }
        if let Some(p) = &policy {
            note!("{}", coverage_line(&name, p, inventory.sidecars));
        }
        if !args.wait {
            note!("follow the rollout with `meshctl tls status` (or `meshctl tls set ... --wait`)");
        }
    })?;
    if args.wait {
        wait_acked(&api, &name, timeout).await?;
    }
    Ok(())
}

/// The policy `name` of the root namespace in `GET /api/v1/tls`.
fn policy_of(inventory: &TlsInventory, name: &str) -> Option<TlsPolicyStatus> {
    inventory
        .policies
        .iter()
        .find(|p| p.namespace == ROOT_NAMESPACE && p.name == name)
        .cloned()
}

/// `tlspolicy/x covers 2 of 3 sidecars, 1 ACKed`, or why it covers none.
fn coverage_line(name: &str, p: &TlsPolicyStatus, sidecars: usize) -> String {
    let (covers, acked, selected) = (p.covers, p.acked, p.selected);
    let target = output::display_name("TlsPolicy", name);
    if covers > 0 {
        return format!("{target} covers {covers} of {sidecars} sidecar(s); {acked} ACKed it");
    }
    if selected == 0 {
        return format!(
            "{target} covers no sidecar: its selector matches none of the {sidecars} connected"
        );
    }
    let buckets: Vec<String> = p
        .selected_buckets
        .iter()
        .take(10)
        .map(|b| b.to_string())
        .collect();
    match p.rollout_percent {
        Some(pct) => format!(
            "{target} covers no sidecar: a {pct}% stage takes the sidecars whose rollout bucket \
             is below {pct}, and the {selected} it selects have buckets {}; raise --stage above \
             {}% to include one",
            buckets.join(", "),
            buckets.first().map_or("0", String::as_str)
        ),
        // Selected but not in effect: a more specific policy wins on them.
        None => format!(
            "{target} covers no sidecar: a more specific TlsPolicy is in effect on the {selected} \
             it selects (see `meshctl tls status`)"
        ),
    }
}

/// Polls `GET /api/v1/tls` until every sidecar the policy covers ACKed it, with a progress
/// line on stderr; a failure when `timeout` passes first.
async fn wait_acked(api: &Client, name: &str, timeout: std::time::Duration) -> Result<(), Failure> {
    let start = std::time::Instant::now();
    let mut last = String::new();
    loop {
        let inventory: TlsInventory = api.fetch("/api/v1/tls").await?;
        let Some(p) = policy_of(&inventory, name) else {
            return Err(Failure::new(
                EXIT_FAILURE,
                format!("TlsPolicy {ROOT_NAMESPACE}/{name} is gone (deleted meanwhile?)"),
            ));
        };
        let (covers, acked) = (p.covers, p.acked);
        let line = format!("{acked} of {covers} covered sidecar(s) ACKed");
        if line != last {
            note!("{line}");
            last = line;
        }
        if acked >= covers {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(Failure::new(
                EXIT_FAILURE,
                format!(
                    "only {acked} of the {covers} sidecar(s) TlsPolicy {ROOT_NAMESPACE}/{name} \
                     covers ACKed it within {}; see `meshctl status` for the others",
                    humantime::format_duration(timeout)
                ),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// A TLS version as typed in documents (`1.3`), for what sidecars report as rustls names it
/// (`TLSv1_3`).
fn version(text: &str) -> String {
    match text {
        "TLSv1_3" => "1.3".into(),
        "TLSv1_2" => "1.2".into(),
        other => other.to_string(),
    }
}

type Spec = serde_json::Map<String, Value>;

/// The stored spec of a TlsPolicy in the root namespace, `None` when there is none.
async fn stored_spec(api: &Client, name: &str) -> Result<Option<Spec>, Failure> {
    let (code, existing) = api
        .probe(&format!(
            "/api/v1/documents/TlsPolicy/{ROOT_NAMESPACE}/{name}"
        ))
        .await?;
    if code != 200 {
        return Ok(None);
    }
    let path = format!("/api/v1/documents/TlsPolicy/{ROOT_NAMESPACE}/{name}");
    let stored: StoredDocument = api.read(&path, existing)?;
    Ok(match stored.document.get("spec") {
        Some(Value::Object(spec)) => Some(spec.clone()),
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
    let inventory: TlsInventory = api.fetch("/api/v1/tls").await?;
    output::emit(format, &inventory, |inv| {
        let mut policies = Table::new(&[
            "POLICY", "SELECTOR", "STAGE", "MIN", "MAX", "CIPHERS", "GROUPS", "MODE", "COVERS",
            "ACKED",
        ]);
        let mut uncovering = Vec::new();
        for p in &inv.policies {
            let list = |items: &[String]| {
                if items.is_empty() {
                    "(default)".to_string()
                } else {
                    items.join(",")
                }
            };
            policies.row(vec![
                format!("{}/{}", text(&p.namespace), text(&p.name)),
                match &p.selector {
                    None => "(all)".into(),
                    Some(selector) => serde_json::to_string(selector).unwrap_or_default(),
                },
                match p.rollout_percent {
                    Some(pct) => format!("{pct}%"),
                    None => "-".into(),
                },
                text(&p.min_version),
                text(&p.max_version),
                list(&p.cipher_suites),
                list(&p.key_exchange_groups),
                text(&p.inbound_mode),
                text(&p.covers),
                text(&p.acked),
            ]);
            if p.covers == 0 {
                uncovering.push(coverage_line(&text(&p.name), p, inv.sidecars));
            }
        }
        if policies.is_empty() {
            say!("no TlsPolicy: TLS 1.2 and 1.3 with the provider's defaults");
        } else {
            policies.print();
            for line in &uncovering {
                say!("{line}");
            }
        }
        if let Some(b) = &inv.bridge {
            say!(
                "a change that shares nothing with the running policy is bridged: both settings \
                 accepted until every sidecar ACKed ({} still to ACK, for {}s)",
                b.waiting_sidecars,
                b.for_secs
            );
        }
        say!();
        say!(
            "{} of {} sidecars reported what they negotiate:",
            inv.reporting,
            inv.sidecars
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
        for n in &inv.negotiated {
            table.row(vec![
                text(&n.direction),
                version(&text(&n.version)),
                text(&n.cipher_suite),
                text(&n.group),
                text(&n.open_connections),
                text(&n.handshakes),
                text(&n.sidecars),
            ]);
        }
        table.print();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_shown_as_typed_and_an_empty_stage_says_why() {
        assert_eq!(version("TLSv1_3"), "1.3");
        assert_eq!(version("TLSv1_2"), "1.2");
        let policy = |covers, acked, selected, buckets: &[u8], pct| TlsPolicyStatus {
            namespace: ROOT_NAMESPACE.into(),
            name: "p".into(),
            selector: None,
            min_version: "1.2".into(),
            max_version: "1.3".into(),
            cipher_suites: vec![],
            key_exchange_groups: vec![],
            inbound_mode: "STRICT".into(),
            drain_grace_period_secs: 0,
            rollout_percent: pct,
            covers,
            acked,
            selected,
            selected_buckets: buckets.to_vec(),
        };
        let p = policy(0, 0, 3, &[54, 69, 98], Some(50));
        let line = coverage_line("mesh-tls-stage", &p, 3);
        assert!(
            line.starts_with("tlspolicy/mesh-tls-stage covers no sidecar: a 50% stage"),
            "{line}"
        );
        assert!(
            line.contains("buckets 54, 69, 98; raise --stage above 54%"),
            "{line}"
        );
        let p = policy(2, 1, 3, &[], None);
        assert_eq!(
            coverage_line("mesh-tls", &p, 3),
            "tlspolicy/mesh-tls covers 2 of 3 sidecar(s); 1 ACKed it"
        );
    }

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
