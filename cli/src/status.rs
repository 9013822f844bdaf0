//! `meshctl status` (every connected sidecar, like `istioctl proxy-status`, with the NACK text
//! and the certificate expiry) and `meshctl config-dump SIDECAR` (what its scope holds).

use crate::Failure;
use crate::admin::{Client, segment};
use crate::output::{self, Format, Table, ago, expires, text, type_name};
use mesh_admin_api::{Sidecar, SidecarConfig, SidecarList, SyncState, TypeStatus};

/// The sidecars, as the admin API lists them, in namespace `namespace` if given.
pub async fn sidecars(api: &Client, namespace: Option<&str>) -> Result<Vec<Sidecar>, Failure> {
    Ok(sidecars_here(api, namespace).await?.0)
}

/// [`sidecars`], and how many more the other meshd replicas hold (the list is the asked
/// replica's).
async fn sidecars_here(
    api: &Client,
    namespace: Option<&str>,
) -> Result<(Vec<Sidecar>, u64), Failure> {
    let all: SidecarList = api.fetch("/api/v1/sidecars").await?;
    let list = all
        .sidecars
        .into_iter()
        .filter(|s| namespace.is_none_or(|ns| s.status.namespace == ns))
        .collect();
    Ok((list, all.elsewhere))
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
pub fn sync_summary(types: &[TypeStatus]) -> String {
    if types.is_empty() {
        return "CONNECTING".into();
    }
    let named = |state: SyncState| -> Vec<String> {
        types
            .iter()
            .filter(|t| t.state == state)
            .map(|t| type_name(&t.type_url).to_string())
            .collect()
    };
    let parts: Vec<String> = [(SyncState::Nacked, "NACKED"), (SyncState::Stale, "STALE")]
        .into_iter()
        .filter_map(|(state, word)| {
            let names = named(state);
            (!names.is_empty()).then(|| format!("{word} {}", names.join(",")))
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
            .find(|s| s.status.id == id)
            .ok_or_else(|| no_sidecar(id))?;
        return output::emit(format, &one, detail_table);
    }
    let value = serde_json::json!({ "sidecars": list, "elsewhere": elsewhere });
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
            let st = &s.status;
            table.row(vec![
                text(&st.id),
                text(&st.identity),
                text(&st.service),
                text(&st.control_plane),
                sync_summary(&st.types),
                expires(&s.cert_expires_at),
                ago(&st.last_seen),
            ]);
            for t in &st.types {
                if let Some(nack) = &t.nack {
                    nacks.row(vec![
                        text(&st.id),
                        type_name(&t.type_url).into(),
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
fn detail_table(sidecar: &Sidecar) {
    let s = &sidecar.status;
    say_part!(
        "{}",
        output::fields(&[
            ("Name", text(&s.id)),
            ("Identity", text(&s.identity)),
            ("Service", text(&s.service)),
            ("Workload", text(&s.workload)),
            ("Inbound", text(&s.inbound_address)),
            ("Admin", text(&s.admin_address)),
            ("Proxy", text(&s.proxy_version)),
            ("Replica", text(&s.control_plane)),
            ("Remote", text(&s.remote)),
            ("Rollout", format!("bucket {}", text(&s.rollout_bucket))),
            (
                "Cert",
                format!(
                    "serial {}, expires {}",
                    text(&sidecar.cert_serial),
                    expires(&sidecar.cert_expires_at)
                )
            ),
            ("Connected", ago(&s.connected_at)),
            ("Last seen", ago(&s.last_seen)),
        ])
    );
    say!();
    let mut table = Table::new(&["TYPE", "STATE", "SENT", "ACKED", "NACK"]);
    for t in &s.types {
        table.row(vec![
            type_name(&t.type_url).into(),
            state_word(t.state).into(),
            text(&t.sent_version),
            text(&t.acked_version),
            t.nack.as_deref().map_or("-".into(), one_line),
        ]);
    }
    table.print();
}

/// `SYNCED`, `STALE`, `NACKED`, as the API spells them.
pub fn state_word(state: SyncState) -> &'static str {
    match state {
        SyncState::Synced => "SYNCED",
        SyncState::Stale => "STALE",
        SyncState::Nacked => "NACKED",
    }
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
    let dump: SidecarConfig = api
        .fetch(&format!("/api/v1/sidecars/{}/config", segment(id)))
        .await
        .map_err(|f| if f.not_found { no_sidecar(id) } else { f })?;
    output::emit(format, &dump, |d| {
        let mut table = Table::new(&["TYPE", "NAME", "VERSION", "STATE"]);
        for (type_url, resources) in &d.resources {
            let state = d
                .types
                .iter()
                .find(|t| &t.type_url == type_url)
                .map_or("-", |t| state_word(t.state));
            for r in resources {
                table.row(vec![
                    type_name(type_url).into(),
                    text(&r.name),
                    text(&r.version),
                    state.into(),
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

    fn ty(name: &str, state: SyncState) -> TypeStatus {
        TypeStatus {
            type_url: format!("type.mesh.v1/{name}"),
            state,
            sent_version: String::new(),
            acked_version: String::new(),
            last_nonce: String::new(),
            nack: None,
        }
    }

    #[test]
    fn sync_is_summarised_worst_first() {
        let types = [
            ty("Cluster", SyncState::Stale),
            ty("RouteTable", SyncState::Nacked),
            ty("Listener", SyncState::Synced),
        ];
        assert_eq!(sync_summary(&types), "NACKED RouteTable; STALE Cluster");
        assert_eq!(
            sync_summary(&[ty("Listener", SyncState::Synced)]),
            "SYNCED (1/1)"
        );
        assert_eq!(sync_summary(&[]), "CONNECTING");
    }
}
