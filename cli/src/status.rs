//! `meshctl status` (every connected sidecar, like `istioctl proxy-status`, with the NACK text
//! and the certificate expiry) and `meshctl config-dump SIDECAR` (what its scope holds).

use crate::Failure;
use crate::admin::{Client, segment};
use crate::output::{self, Format, Table, ago, expires, text, type_name};
use serde_json::{Value, json};

/// The sidecars, as the admin API lists them, in namespace `namespace` if given.
pub async fn sidecars(api: &Client, namespace: Option<&str>) -> Result<Vec<Value>, Failure> {
    Ok(sidecars_here(api, namespace).await?.0)
}

/// [`sidecars`], and how many more the other meshd replicas hold (the list is the asked
/// replica's).
async fn sidecars_here(
    api: &Client,
    namespace: Option<&str>,
) -> Result<(Vec<Value>, u64), Failure> {
    let all = api.get("/api/v1/sidecars").await?;
    let list = all["sidecars"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| namespace.is_none_or(|ns| s["namespace"] == ns))
        .collect();
    Ok((list, all["elsewhere"].as_u64().unwrap_or(0)))
}

/// The line that says the list is one replica's, when others hold sidecars too.
fn elsewhere_note(elsewhere: u64) {
    if elsewhere > 0 {
        note!(
            "{elsewhere} more sidecar(s) are connected to other meshd replicas: this list is the \
             one replica's that --server names; ask the others for theirs"
        );
    }
}

/// `SYNCED`, or what is not: `NACKED RouteTable; STALE Cluster,Listener`. A sidecar that has
/// not subscribed to anything yet is `CONNECTING`.
pub fn sync_summary(sidecar: &Value) -> String {
    let types = sidecar["types"].as_array().cloned().unwrap_or_default();
    if types.is_empty() {
        return "CONNECTING".into();
    }
    let named = |state: &str| -> Vec<String> {
        types
            .iter()
            .filter(|t| t["state"] == state)
            .map(|t| type_name(t["type_url"].as_str().unwrap_or_default()).to_string())
            .collect()
    };
    let parts: Vec<String> = ["NACKED", "STALE"]
        .into_iter()
        .filter_map(|state| {
            let names = named(state);
            (!names.is_empty()).then(|| format!("{state} {}", names.join(",")))
        })
        .collect();
    if parts.is_empty() {
        format!("SYNCED ({}/{})", types.len(), types.len())
    } else {
        parts.join("; ")
    }
}

pub async fn status(
    sidecar: Option<&str>,
    namespace: Option<&str>,
    format: Format,
    api: Client,
) -> Result<(), Failure> {
    let (list, elsewhere) = sidecars_here(&api, namespace).await?;
    if let Some(id) = sidecar {
        let one = list
            .into_iter()
            .find(|s| s["id"] == id)
            .ok_or_else(|| no_sidecar(id))?;
        return output::emit(format, &one, detail_table);
    }
    let value = json!({ "sidecars": list, "elsewhere": elsewhere });
    output::emit(format, &value, |_| {
        if list.is_empty() {
            let place = namespace.map_or(String::new(), |ns| format!(" in namespace {ns}"));
            note!("no sidecars connected{place}");
            elsewhere_note(elsewhere);
            return;
        }
        let mut table = Table::new(&[
            "NAME",
            "IDENTITY",
            "SERVICE",
            "REPLICA",
            "SYNC",
            "CERT EXPIRES",
            "LAST SEEN",
        ]);
        let mut nacks = Table::new(&["SIDECAR", "TYPE", "NACK"]);
        for s in &list {
            table.row(vec![
                text(&s["id"]),
                text(&s["identity"]),
                text(&s["service"]),
                text(&s["control_plane"]),
                sync_summary(s),
                expires(&s["cert_expires_at"]),
                ago(&s["last_seen"]),
            ]);
            for t in s["types"].as_array().into_iter().flatten() {
                if let Some(nack) = t["nack"].as_str() {
                    nacks.row(vec![
                        text(&s["id"]),
                        type_name(t["type_url"].as_str().unwrap_or_default()).into(),
                        one_line(nack),
                    ]);
                }
            }
        }
        table.print();
        elsewhere_note(elsewhere);
        if !nacks.is_empty() {
            say!();
            nacks.print();
        }
    })
}

/// One sidecar, type by type.
fn detail_table(s: &Value) {
    say_part!(
        "{}",
        output::fields(&[
            ("Name", text(&s["id"])),
            ("Identity", text(&s["identity"])),
            ("Service", text(&s["service"])),
            ("Workload", text(&s["workload"])),
            ("Inbound", text(&s["inbound_address"])),
            ("Admin", text(&s["admin_address"])),
            ("Proxy", text(&s["proxy_version"])),
            ("Replica", text(&s["control_plane"])),
            ("Remote", text(&s["remote"])),
            ("Rollout", format!("bucket {}", text(&s["rollout_bucket"]))),
            (
                "Cert",
                format!(
                    "serial {}, expires {}",
                    text(&s["cert_serial"]),
                    expires(&s["cert_expires_at"])
                )
            ),
            ("Connected", ago(&s["connected_at"])),
            ("Last seen", ago(&s["last_seen"])),
        ])
    );
    say!();
    let mut table = Table::new(&["TYPE", "STATE", "SENT", "ACKED", "NACK"]);
    for t in s["types"].as_array().into_iter().flatten() {
        table.row(vec![
            type_name(t["type_url"].as_str().unwrap_or_default()).into(),
            text(&t["state"]),
            text(&t["sent_version"]),
            text(&t["acked_version"]),
            t["nack"].as_str().map_or("-".into(), one_line),
        ]);
    }
    table.print();
}

fn no_sidecar(id: &str) -> Failure {
    Failure::not_found(format!(
        "no connected sidecar {id:?}; list them with `meshctl status`"
    ))
}

/// A NACK text is the sidecar's; a table row holds one line of it.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `meshctl config-dump SIDECAR`.
pub async fn config_dump(id: &str, format: Format, api: Client) -> Result<(), Failure> {
    let dump = api
        .get(&format!("/api/v1/sidecars/{}/config", segment(id)))
        .await
        .map_err(|f| if f.not_found { no_sidecar(id) } else { f })?;
    output::emit(format, &dump, |d| {
        let states: Vec<(String, String)> = d["types"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| (text(&t["type_url"]), text(&t["state"])))
            .collect();
        let mut table = Table::new(&["TYPE", "NAME", "VERSION", "STATE"]);
        for (type_url, resources) in d["resources"].as_object().into_iter().flatten() {
            let state = states
                .iter()
                .find(|(t, _)| t == type_url)
                .map_or("-".to_string(), |(_, s)| s.clone());
            for r in resources.as_array().into_iter().flatten() {
                table.row(vec![
                    type_name(type_url).into(),
                    text(&r["name"]),
                    text(&r["version"]),
                    state.clone(),
                ]);
            }
        }
        table.print();
        note!("the resources' bodies: meshctl config-dump {id} -o yaml");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_is_summarised_worst_first() {
        let s = json!({"types": [
            {"type_url": "type.mesh.v1/Cluster", "state": "STALE"},
            {"type_url": "type.mesh.v1/RouteTable", "state": "NACKED"},
            {"type_url": "type.mesh.v1/Listener", "state": "SYNCED"},
        ]});
        assert_eq!(sync_summary(&s), "NACKED RouteTable; STALE Cluster");
        let s = json!({"types": [{"type_url": "type.mesh.v1/Listener", "state": "SYNCED"}]});
        assert_eq!(sync_summary(&s), "SYNCED (1/1)");
        assert_eq!(sync_summary(&json!({"types": []})), "CONNECTING");
    }
}
