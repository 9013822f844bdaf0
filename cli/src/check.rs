//! `meshctl check`: is the mesh healthy? One line per finding, each with what to do, and a
//! non-zero exit when something is wrong (1; 3 when meshd cannot be reached at all).
//!
//! | check | fails when | warns when |
//! |---|---|---|
//! | control plane | `/healthz` does not answer | |
//! | store | `/healthz` says the store does not answer | |
//! | admin API | the admin token is refused | |
//! | CA | the signing certificate or a root expired | one expires within 30 days |
//! | sidecars | a type is NACKED; a type is STALE in two polls 2 s apart | |
//! | certificates | an identity's newest certificate is within 10% of its lifetime (or 5 minutes) of expiry | |
//!
//! STALE is normal for the moment between a change and the sidecar's ACK, hence the second
//! poll. A certificate is judged by its identity's newest one: a workload renews at about half
//! of the lifetime, so an older certificate running out is expected, but the newest one running
//! out means the workload stopped renewing.

use crate::admin::Client;
use crate::output::{self, Format, expires, short_duration, text, type_name, utc};
use crate::{EXIT_FAILURE, EXIT_UNREACHABLE, Failure};
use mesh_admin_api::{CaCert, CaStatus, Certificate, CertificateList, Sidecar, SyncState};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The CA warns this long before it expires.
const CA_WARNING: i64 = 30 * 86_400;
/// A STALE type must still be STALE after this long to count.
const STALE_RECHECK: Duration = Duration::from_secs(2);
/// A certificate is near expiry within this share of its lifetime…
const NEAR_EXPIRY_SHARE: i64 = 10;
/// …or within this many seconds, whichever is longer.
const NEAR_EXPIRY_FLOOR: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        }
    }
}

struct Finding {
    level: Level,
    check: &'static str,
    message: String,
    /// What to do about it.
    fix: Option<String>,
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn ok(&mut self, check: &'static str, message: impl Into<String>) {
        self.push(Level::Ok, check, message.into(), None);
    }

    fn warn(&mut self, check: &'static str, message: impl Into<String>, fix: impl Into<String>) {
        self.push(Level::Warn, check, message.into(), Some(fix.into()));
    }

    fn fail(&mut self, check: &'static str, message: impl Into<String>, fix: impl Into<String>) {
        self.push(Level::Fail, check, message.into(), Some(fix.into()));
    }

    fn push(&mut self, level: Level, check: &'static str, message: String, fix: Option<String>) {
        self.0.push(Finding {
            level,
            check,
            message,
            fix,
        });
    }

    fn failures(&self) -> usize {
        self.0.iter().filter(|f| f.level == Level::Fail).count()
    }

    fn to_json(&self) -> Value {
        let findings: Vec<Value> = self
            .0
            .iter()
            .map(|f| {
                json!({
                    "level": f.level.as_str().to_ascii_lowercase(),
                    "check": f.check,
                    "message": f.message,
                    "fix": f.fix,
                })
            })
            .collect();
        json!({ "ok": self.failures() == 0, "findings": findings })
    }

    fn print(&self) {
        for f in &self.0 {
            let fix = f.fix.as_deref().map_or(String::new(), |x| format!("; {x}"));
            say!("{:<4}  {}: {}{fix}", f.level.as_str(), f.check, f.message);
        }
    }

    /// Prints the findings; the exit status they call for.
    fn finish(self, format: Format, unreachable: bool) -> Result<(), Failure> {
        output::emit(format, &self.to_json(), |_| self.print())?;
        let failures = self.failures();
        if unreachable {
            return Err(Failure::new(EXIT_UNREACHABLE, "meshd cannot be reached"));
        }
        match failures {
            0 => Ok(()),
            1 => Err(Failure::new(EXIT_FAILURE, "1 problem found")),
            n => Err(Failure::new(EXIT_FAILURE, format!("{n} problems found"))),
        }
    }
}

pub async fn run(namespace: Option<&str>, format: Format, api: Client) -> Result<(), Failure> {
    let mut findings = Findings::default();

    // The control plane and its store (`/healthz` pings the store).
    match api.probe("/healthz").await {
        Err(f) => {
            findings.fail(
                "control plane",
                f.message,
                "start meshd, or point --server / MESHCTL_SERVER at its admin address",
            );
            return findings.finish(format, true);
        }
        Ok((200, _)) => {
            findings.ok("control plane", format!("meshd answers at {}", api.base()));
            findings.ok("store", "the store answers");
        }
        Ok((503, body)) => {
            findings.ok("control plane", format!("meshd answers at {}", api.base()));
            findings.fail(
                "store",
                serde_json::from_value::<mesh_admin_api::ErrorBody>(body)
                    .map_or_else(|_| "the store does not answer".to_string(), |e| e.error),
                "check the database meshd uses (--database-url) and meshd's log",
            );
        }
        Ok((status, _)) => findings.fail(
            "control plane",
            format!("{} answered /healthz with HTTP {status}", api.base()),
            "is --server meshd's admin address (not its gRPC one)?",
        ),
    }

    // Everything else needs the admin token; if meshd refuses it, say so once and stop.
    let ca = match api.fetch::<CaStatus>("/api/v1/ca").await {
        Ok(ca) => ca,
        Err(f) => {
            findings.fail(
                "admin API",
                f.message,
                "fix the admin token or the address, then run `meshctl check` again",
            );
            let unreachable = f.code == EXIT_UNREACHABLE;
            return findings.finish(format, unreachable);
        }
    };
    check_ca(&ca, &mut findings);

    match crate::status::sidecars(&api, namespace).await {
        Ok(first) => check_sidecars(&api, namespace, first, &mut findings).await,
        Err(f) => findings.fail("sidecars", plain(f), "see meshd's log"),
    }

    let certs = api
        .fetch::<CertificateList>("/api/v1/certificates?live=true")
        .await;
    match certs {
        Ok(certs) => check_certificates(&certs, &mut findings),
        Err(f) => findings.fail("certificates", plain(f), "see meshd's log"),
    }
    findings.finish(format, false)
}

/// A failure's message without the hint to run `meshctl check` (this is it).
fn plain(f: Failure) -> String {
    f.message
        .strip_suffix(crate::admin::SERVER_ERROR_HINT)
        .map(str::to_string)
        .unwrap_or(f.message)
}

fn check_ca(ca: &CaStatus, findings: &mut Findings) {
    let mut certs: Vec<(&str, &CaCert)> = vec![("signing certificate", &ca.signing)];
    for root in &ca.roots {
        certs.push(("root", &root.cert));
    }
    let now = output::now();
    // The certificate that expires first decides.
    let soonest = certs
        .into_iter()
        .map(|(what, c)| (c.not_after, what, c))
        .min_by_key(|(t, _, _)| *t);
    let Some((not_after, what, cert)) = soonest else {
        findings.fail("CA", "meshd reported no CA certificate", "see meshd's log");
        return;
    };
    let subject = text(&cert.subject);
    let when = format!("{} ({})", utc(&not_after), expires(&not_after));
    if not_after <= now {
        findings.fail(
            "CA",
            format!(
                "the CA's {what} {subject} expired at {when}; no new certificate can be trusted"
            ),
            "replace the CA now (restart meshd with --ca-cert/--ca-key of a new CA, or rotate it)",
        );
    } else if not_after - now < CA_WARNING {
        findings.warn(
            "CA",
            format!("the CA's {what} {subject} expires {when}"),
            "rotate the CA before then",
        );
    } else {
        findings.ok("CA", format!("valid until {when}"));
    }
}

/// (sidecar id, type name) pairs in `state`.
fn in_state(sidecars: &[Sidecar], state: SyncState) -> BTreeSet<(String, String)> {
    sidecars
        .iter()
        .flat_map(|s| {
            s.status
                .types
                .iter()
                .filter(move |t| t.state == state)
                .map(|t| (text(&s.status.id), type_name(&t.type_url).to_string()))
        })
        .collect()
}

async fn check_sidecars(
    api: &Client,
    namespace: Option<&str>,
    first: Vec<Sidecar>,
    findings: &mut Findings,
) {
    let mut problems = 0;
    for s in &first {
        for t in &s.status.types {
            if t.state == SyncState::Nacked {
                problems += 1;
                let id = text(&s.status.id);
                findings.fail(
                    "sidecars",
                    format!(
                        "{id} rejected {} (NACK): {}",
                        type_name(&t.type_url),
                        text(&t.nack)
                    ),
                    format!(
                        "correct or roll back the change it rejects (`meshctl status {id}`, `meshctl history KIND/NAME`, `meshctl rollback`)"
                    ),
                );
            }
        }
    }
    let stale = in_state(&first, SyncState::Stale);
    if !stale.is_empty() {
        tokio::time::sleep(STALE_RECHECK).await;
        match crate::status::sidecars(api, namespace).await {
            Ok(second) => {
                let still = in_state(&second, SyncState::Stale);
                let mut by_sidecar: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for (id, ty) in stale.intersection(&still) {
                    by_sidecar.entry(id.clone()).or_default().push(ty.clone());
                }
                for (id, types) in by_sidecar {
                    problems += 1;
                    findings.fail(
                        "sidecars",
                        format!(
                            "{id} has not ACKed {} for {}s or more (STALE)",
                            types.join(", "),
                            STALE_RECHECK.as_secs()
                        ),
                        format!("is the sidecar alive and connected? see its log and `meshctl status {id}`"),
                    );
                }
            }
            Err(f) => {
                problems += 1;
                findings.fail("sidecars", plain(f), "see meshd's log");
            }
        }
    }
    if problems == 0 {
        let n = first.len();
        match n {
            0 => findings.ok("sidecars", "no sidecars connected"),
            _ => findings.ok("sidecars", format!("{n} sidecar(s), all in sync")),
        }
    }
}

fn check_certificates(certs: &CertificateList, findings: &mut Findings) {
    let list = &certs.certificates;
    let mut newest: BTreeMap<String, &Certificate> = BTreeMap::new();
    for c in list {
        let identity = text(&c.identity);
        let later = newest
            .get(&identity)
            .is_none_or(|n| c.not_after > n.not_after);
        if later {
            newest.insert(identity, c);
        }
    }
    let now = output::now();
    let mut problems = 0;
    for (identity, c) in &newest {
        let (not_before, not_after) = (c.not_before, c.not_after);
        let lifetime = not_after - not_before;
        let margin = (lifetime / NEAR_EXPIRY_SHARE).max(NEAR_EXPIRY_FLOOR);
        if not_after - now < margin {
            problems += 1;
            findings.fail(
                "certificates",
                format!(
                    "the newest certificate of {identity} (serial {}) expires {} (lifetime {}) and no newer one was issued",
                    text(&c.serial_hex),
                    expires(&c.not_after),
                    short_duration(lifetime)
                ),
                "its workload is not renewing: check its sidecar's log, or renew by hand with `meshctl cert renew`",
            );
        }
    }
    if problems == 0 {
        findings.ok(
            "certificates",
            format!(
                "{} live certificate(s) for {} identities, none near expiry",
                list.len(),
                newest.len()
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use mesh_admin_api::{CaRoot, CertState};

    fn ca_cert(subject: &str, not_after: i64) -> CaCert {
        CaCert {
            fingerprint: String::new(),
            serial_hex: String::new(),
            subject: subject.into(),
            issuer: String::new(),
            not_before: 0,
            not_after,
            self_signed: false,
        }
    }

    fn certs(list: &[(&str, &str, i64, i64)]) -> CertificateList {
        let certificates = list
            .iter()
            .map(|&(identity, serial, not_before, not_after)| Certificate {
                serial_hex: serial.into(),
                identity: identity.into(),
                issuer_fingerprint: String::new(),
                not_before,
                not_after,
                sidecar: None,
                superseded_at: None,
                state: CertState::InUse,
            })
            .collect();
        CertificateList { certificates }
    }

    #[test]
    fn the_ca_warns_a_month_ahead_and_fails_when_expired() {
        let now = output::now();
        let ca = |root_after: i64| CaStatus {
            trust_domain: String::new(),
            signing: ca_cert("CN=signing", now + 400 * 86_400),
            roots: vec![CaRoot {
                cert: ca_cert("CN=root", root_after),
                active: true,
            }],
            leaf_ttl_seconds: 0,
            max_leaf_ttl_seconds: 0,
            rotation_phase: "idle".into(),
            rotation: mesh_admin_api::RotationStatus {
                phase: "idle".into(),
                driven_here: false,
                rotation: None,
            },
        };
        let level = |ca: CaStatus| {
            let mut f = Findings::default();
            check_ca(&ca, &mut f);
            (f.0[0].level, f.0[0].message.clone())
        };
        assert_eq!(level(ca(now + 365 * 86_400)).0, Level::Ok);
        let (l, m) = level(ca(now + 10 * 86_400));
        assert_eq!(l, Level::Warn);
        assert!(m.contains("root CN=root expires"), "{m}");
        assert_eq!(level(ca(now - 1)).0, Level::Fail);
    }

    #[test]
    fn only_an_identitys_newest_certificate_counts() {
        let now = output::now();
        // An old certificate near its end, replaced by a fresh one: fine.
        let renewed = certs(&[
            ("a", "1", now - 3300, now + 300),
            ("a", "2", now - 1500, now + 2100),
        ]);
        let mut f = Findings::default();
        check_certificates(&renewed, &mut f);
        assert_eq!(f.failures(), 0);
        // Within 10% of an hour: not renewed.
        let stuck = certs(&[("b", "3", now - 3300, now + 300)]);
        let mut f = Findings::default();
        check_certificates(&stuck, &mut f);
        assert_eq!(f.failures(), 1);
        assert!(
            f.0[0].message.contains("of b (serial 3)"),
            "{}",
            f.0[0].message
        );
        // A 2-minute certificate is always within 5 minutes of its end.
        let short = certs(&[("c", "4", now - 10, now + 110)]);
        let mut f = Findings::default();
        check_certificates(&short, &mut f);
        assert_eq!(f.failures(), 1);
    }
}
