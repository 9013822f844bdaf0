//! The store, against real SQLite (a file in a temp dir) and real PostgreSQL (a temporary
//! server per test). Every test in `store_suite!` is written once and runs on both backends:
//! `sqlite::<name>` and `postgres::<name>`.

// A panic in a test is a failed assertion. clippy's `allow-unwrap-in-tests` covers only
// `#[test]` functions, not the suite functions they call, hence this allow for the file.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use mesh_tests::postgres::TempPostgres;
use meshd::store::{
    ApplyOutcome, AuditEntry, AuditOutcome, Backend, CaStateRecord, ConsumeOutcome, IssuedCert,
    JoinTokenRecord, RevisionOp, Store, StoreError,
};

/// A database for one test; keeps the temp dir / server alive for as long as the test runs.
struct TestDb {
    url: String,
    _sqlite_dir: Option<tempfile::TempDir>,
    _postgres: Option<TempPostgres>,
}

impl TestDb {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            url: Store::default_sqlite_url(dir.path()),
            _sqlite_dir: Some(dir),
            _postgres: None,
        }
    }

    async fn postgres() -> Self {
        // No skipping: without the server binaries this fails with how to install them.
        let pg = TempPostgres::start()
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        Self {
            url: pg.url(),
            _sqlite_dir: None,
            _postgres: Some(pg),
        }
    }

    async fn open(&self) -> Store {
        Store::open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

macro_rules! store_suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test(super::TestDb::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test(super::TestDb::postgres().await).await;
                }
            )*
        }
    };
}

store_suite!(
    apply_then_get_returns_the_body,
    identical_reapply_creates_no_revision,
    labels_are_part_of_the_document,
    update_creates_the_next_revision,
    delete_keeps_history_and_grows_the_revision,
    failed_delete_writes_nothing,
    recreate_never_reuses_a_revision,
    revisions_keep_growing_after_reopen,
    document_at_revision_is_the_state_at_that_time,
    list_documents_filters_by_kind_and_namespace,
    concurrent_applies_get_distinct_gapless_revisions,
    join_token_lifecycle,
    concurrent_consumers_take_exactly_the_available_uses,
    ca_state_round_trip_and_overwrite,
    ca_key_blobs_are_stored_byte_for_byte,
    certificates_filter_by_validity_and_group_by_issuer,
    a_renewal_supersedes_the_certificate_it_presented,
    registrations_remember_who_was_connected,
    ca_state_is_created_once_and_replaced_only_at_the_version_read,
    the_fleet_of_every_live_replica_with_the_bundle_each_sidecar_acked,
    audit_is_newest_first_with_limit_and_since,
    ping_answers,
);

const BODY_V1: &str = r#"{"apiVersion":"mesh.v1","kind":"HTTPRoute","spec":{"timeout":"1s"}}"#;
const BODY_V2: &str = r#"{"apiVersion":"mesh.v1","kind":"HTTPRoute","spec":{"timeout":"2s"}}"#;

async fn apply_then_get_returns_the_body(db: TestDb) {
    let store = db.open().await;
    assert_eq!(store.current_revision().await.unwrap(), 0);

    let outcome = store
        .apply_document("HTTPRoute", "default", "r", BODY_V1, "alice")
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ApplyOutcome {
            revision: 1,
            changed: true
        }
    );

    let doc = store
        .get_document("HTTPRoute", "default", "r")
        .await
        .unwrap();
    assert_eq!(
        (doc.kind.as_str(), doc.namespace.as_str(), doc.name.as_str()),
        ("HTTPRoute", "default", "r")
    );
    assert_eq!(doc.body, BODY_V1);
    assert_eq!(doc.revision, 1);
    assert!(doc.labels.is_empty());
    assert!(doc.updated_at > 0 && doc.created_at == doc.updated_at);
    assert_eq!(store.current_revision().await.unwrap(), 1);

    // The same name under another kind or namespace is another document.
    let err = store
        .get_document("Service", "default", "r")
        .await
        .unwrap_err();
    assert!(err.is_not_found());
    assert_eq!(err.to_string(), "document Service default/r not found");
    assert!(store.get_document("HTTPRoute", "other", "r").await.is_err());
}

async fn identical_reapply_creates_no_revision(db: TestDb) {
    let store = db.open().await;
    let first = store
        .apply_document("Service", "default", "foo", BODY_V1, "alice")
        .await
        .unwrap();
    let audit_before = store.list_audit(100, None).await.unwrap().len();

    let again = store
        .apply_document("Service", "default", "foo", BODY_V1, "bob")
        .await
        .unwrap();
    assert_eq!(
        again,
        ApplyOutcome {
            revision: first.revision,
            changed: false
        }
    );
    assert_eq!(store.current_revision().await.unwrap(), first.revision);
    let history = store.history("Service", "default", "foo").await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].actor, "alice");
    assert_eq!(
        store.list_audit(100, None).await.unwrap().len(),
        audit_before,
        "a no-op apply writes no audit row"
    );

    // And the no-op did not burn a revision number.
    let next = store
        .apply_document("Service", "default", "foo", BODY_V2, "bob")
        .await
        .unwrap();
    assert_eq!(next.revision, first.revision + 1);
}

async fn labels_are_part_of_the_document(db: TestDb) {
    let store = db.open().await;
    let labels: BTreeMap<String, String> = [("app", "web"), ("tier", "front")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let first = store
        .apply_document_with_labels("Service", "prod", "web", BODY_V1, &labels, "alice")
        .await
        .unwrap();
    let doc = store.get_document("Service", "prod", "web").await.unwrap();
    assert_eq!(doc.labels, labels);

    let same = store
        .apply_document_with_labels("Service", "prod", "web", BODY_V1, &labels, "alice")
        .await
        .unwrap();
    assert!(!same.changed);

    // Same body, other labels: a change.
    let mut relabeled = labels.clone();
    relabeled.insert("tier".into(), "back".into());
    let second = store
        .apply_document_with_labels("Service", "prod", "web", BODY_V1, &relabeled, "alice")
        .await
        .unwrap();
    assert!(second.changed);
    assert_eq!(second.revision, first.revision + 1);
    let history = store.history("Service", "prod", "web").await.unwrap();
    assert_eq!(history[0].labels, labels);
    assert_eq!(history[1].labels, relabeled);
}

async fn update_creates_the_next_revision(db: TestDb) {
    let store = db.open().await;
    let v1 = store
        .apply_document("HTTPRoute", "default", "r", BODY_V1, "alice")
        .await
        .unwrap();
    let v2 = store
        .apply_document("HTTPRoute", "default", "r", BODY_V2, "bob")
        .await
        .unwrap();
    assert_eq!(
        v2,
        ApplyOutcome {
            revision: v1.revision + 1,
            changed: true
        }
    );
    let doc = store
        .get_document("HTTPRoute", "default", "r")
        .await
        .unwrap();
    assert_eq!(doc.body, BODY_V2);
    assert_eq!(doc.revision, v2.revision);
    assert!(doc.created_at <= doc.updated_at);

    let history = store.history("HTTPRoute", "default", "r").await.unwrap();
    let summary: Vec<_> = history
        .iter()
        .map(|r| (r.revision, r.op, r.body.as_deref(), r.actor.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (v1.revision, RevisionOp::Create, Some(BODY_V1), "alice"),
            (v2.revision, RevisionOp::Update, Some(BODY_V2), "bob"),
        ]
    );

    // Revisions are global: another document takes the next one.
    let other = store
        .apply_document("Service", "default", "s", BODY_V1, "alice")
        .await
        .unwrap();
    assert_eq!(other.revision, v2.revision + 1);
}

async fn delete_keeps_history_and_grows_the_revision(db: TestDb) {
    let store = db.open().await;
    store
        .apply_document("HTTPRoute", "default", "r", BODY_V1, "alice")
        .await
        .unwrap();
    let v2 = store
        .apply_document("HTTPRoute", "default", "r", BODY_V2, "alice")
        .await
        .unwrap();
    let deleted = store
        .delete_document("HTTPRoute", "default", "r", "carol")
        .await
        .unwrap();
    assert_eq!(deleted, v2.revision + 1);
    assert_eq!(store.current_revision().await.unwrap(), deleted);

    let err = store
        .get_document("HTTPRoute", "default", "r")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DocumentNotFound { .. }), "{err}");
    assert!(store.list_documents(None, None).await.unwrap().is_empty());

    let history = store.history("HTTPRoute", "default", "r").await.unwrap();
    let ops: Vec<_> = history.iter().map(|r| r.op).collect();
    assert_eq!(
        ops,
        [RevisionOp::Create, RevisionOp::Update, RevisionOp::Delete]
    );
    let last = &history[2];
    assert_eq!(
        (last.revision, last.body.as_deref(), last.actor.as_str()),
        (deleted, None, "carol")
    );

    // The audit log has the delete, by whom, on what.
    let newest = &store.list_audit(1, None).await.unwrap()[0];
    assert_eq!(
        (
            newest.actor.as_str(),
            newest.action.as_str(),
            newest.target.as_str(),
            newest.outcome
        ),
        (
            "carol",
            "document.delete",
            "HTTPRoute default/r",
            AuditOutcome::Ok
        )
    );
}

async fn failed_delete_writes_nothing(db: TestDb) {
    let store = db.open().await;
    let applied = store
        .apply_document("Service", "default", "real", BODY_V1, "alice")
        .await
        .unwrap();
    let audit_before = store.list_audit(100, None).await.unwrap();

    let err = store
        .delete_document("Service", "default", "ghost", "mallory")
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "document Service default/ghost not found");

    assert_eq!(store.current_revision().await.unwrap(), applied.revision);
    assert_eq!(store.list_audit(100, None).await.unwrap(), audit_before);
    assert!(
        store
            .history("Service", "default", "ghost")
            .await
            .unwrap_err()
            .is_not_found()
    );
    // The next change takes the very next number: the failed delete left no trace.
    let next = store
        .apply_document("Service", "default", "real", BODY_V2, "alice")
        .await
        .unwrap();
    assert_eq!(next.revision, applied.revision + 1);
}

async fn recreate_never_reuses_a_revision(db: TestDb) {
    let store = db.open().await;
    let created = store
        .apply_document("Service", "default", "foo", BODY_V1, "alice")
        .await
        .unwrap();
    let deleted = store
        .delete_document("Service", "default", "foo", "alice")
        .await
        .unwrap();
    let recreated = store
        .apply_document("Service", "default", "foo", BODY_V1, "alice")
        .await
        .unwrap();
    assert!(recreated.changed, "re-creating after a delete is a change");
    assert!(created.revision < deleted && deleted < recreated.revision);

    let history = store.history("Service", "default", "foo").await.unwrap();
    let revisions: Vec<_> = history.iter().map(|r| (r.revision, r.op)).collect();
    assert_eq!(
        revisions,
        [
            (created.revision, RevisionOp::Create),
            (deleted, RevisionOp::Delete),
            (recreated.revision, RevisionOp::Create),
        ]
    );
    let doc = store
        .get_document("Service", "default", "foo")
        .await
        .unwrap();
    assert_eq!(doc.revision, recreated.revision);
}

async fn revisions_keep_growing_after_reopen(db: TestDb) {
    let store = db.open().await;
    store
        .apply_document("Service", "default", "a", BODY_V1, "alice")
        .await
        .unwrap();
    let last = store
        .delete_document("Service", "default", "a", "alice")
        .await
        .unwrap();
    store.close().await;
    assert!(store.ping().await.is_err(), "a closed store refuses work");

    // Same file / database, a new process's view of it: the schema is already migrated.
    let reopened = db.open().await;
    assert_eq!(reopened.current_revision().await.unwrap(), last);
    let next = reopened
        .apply_document("Service", "default", "a", BODY_V1, "alice")
        .await
        .unwrap();
    assert_eq!(next.revision, last + 1);
    let deleted_again = reopened
        .delete_document("Service", "default", "a", "alice")
        .await
        .unwrap();
    reopened.close().await;

    // Everything deleted, reopened once more: still no reuse.
    let third = db.open().await;
    assert!(third.list_documents(None, None).await.unwrap().is_empty());
    let again = third
        .apply_document("Service", "default", "b", BODY_V1, "alice")
        .await
        .unwrap();
    assert_eq!(again.revision, deleted_again + 1);
    assert_eq!(
        third
            .history("Service", "default", "a")
            .await
            .unwrap()
            .len(),
        4
    );
}

async fn document_at_revision_is_the_state_at_that_time(db: TestDb) {
    let store = db.open().await;
    let unrelated = store
        .apply_document("Service", "default", "x", BODY_V1, "alice")
        .await
        .unwrap();
    let v1 = store
        .apply_document("HTTPRoute", "default", "r", BODY_V1, "alice")
        .await
        .unwrap();
    let between = store
        .apply_document("Service", "default", "x", BODY_V2, "alice")
        .await
        .unwrap();
    let v2 = store
        .apply_document("HTTPRoute", "default", "r", BODY_V2, "bob")
        .await
        .unwrap();
    let deleted = store
        .delete_document("HTTPRoute", "default", "r", "bob")
        .await
        .unwrap();

    let at = |revision| store.document_at_revision("HTTPRoute", "default", "r", revision);
    let exact = at(v1.revision).await.unwrap();
    assert_eq!(
        (exact.revision, exact.op, exact.body.as_deref()),
        (v1.revision, RevisionOp::Create, Some(BODY_V1))
    );
    // A global revision between two changes of this document: the state then.
    assert_eq!(at(between.revision).await.unwrap().revision, v1.revision);
    assert_eq!(
        at(v2.revision).await.unwrap().body.as_deref(),
        Some(BODY_V2)
    );

    // Before it existed, and once deleted: not found, with the revision in the message.
    let err = at(unrelated.revision).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "revision {} of HTTPRoute default/r not found",
            unrelated.revision
        )
    );
    assert!(at(deleted).await.unwrap_err().is_not_found());
    assert!(at(deleted + 100).await.is_err());
}

async fn list_documents_filters_by_kind_and_namespace(db: TestDb) {
    let store = db.open().await;
    for (kind, ns, name) in [
        ("Service", "prod", "b"),
        ("Service", "prod", "a"),
        ("Service", "dev", "a"),
        ("HTTPRoute", "prod", "a"),
    ] {
        store
            .apply_document(kind, ns, name, BODY_V1, "alice")
            .await
            .unwrap();
    }
    let keys = |docs: Vec<meshd::store::Document>| {
        docs.into_iter()
            .map(|d| format!("{} {}/{}", d.kind, d.namespace, d.name))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(store.list_documents(None, None).await.unwrap()),
        [
            "HTTPRoute prod/a",
            "Service dev/a",
            "Service prod/a",
            "Service prod/b"
        ]
    );
    assert_eq!(
        keys(store.list_documents(Some("Service"), None).await.unwrap()),
        ["Service dev/a", "Service prod/a", "Service prod/b"]
    );
    assert_eq!(
        keys(store.list_documents(None, Some("prod")).await.unwrap()),
        ["HTTPRoute prod/a", "Service prod/a", "Service prod/b"]
    );
    assert_eq!(
        keys(
            store
                .list_documents(Some("Service"), Some("dev"))
                .await
                .unwrap()
        ),
        ["Service dev/a"]
    );
    assert!(
        store
            .list_documents(Some("Gateway"), None)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn concurrent_applies_get_distinct_gapless_revisions(db: TestDb) {
    let store = db.open().await;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..5 {
                // Half the writers fight over one document, half write their own.
                let name = if task % 2 == 0 {
                    "shared".to_owned()
                } else {
                    format!("own-{task}")
                };
                let body = format!(r#"{{"task":{task},"i":{i}}}"#);
                let outcome = store
                    .apply_document("Service", "default", &name, &body, "writer")
                    .await
                    .unwrap();
                assert!(outcome.changed);
                revisions.push(outcome.revision);
            }
            revisions
        });
    }
    let mut all: Vec<i64> = tasks.join_all().await.into_iter().flatten().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=40).collect::<Vec<i64>>());
    assert_eq!(store.current_revision().await.unwrap(), 40);
    assert_eq!(
        store
            .history("Service", "default", "shared")
            .await
            .unwrap()
            .len(),
        20
    );
}

fn token(id: &str, uses: u32, expires_at: i64) -> JoinTokenRecord {
    JoinTokenRecord {
        id: id.to_owned(),
        token_hash: hash_of(id),
        identity: format!("spiffe://mesh.local/ns/default/sa/{id}"),
        expires_at,
        uses_remaining: uses,
        created_by: "admin".to_owned(),
    }
}

/// Stands in for the SHA-256 of a secret: the store only compares hex strings.
fn hash_of(id: &str) -> String {
    id.bytes().map(|b| format!("{b:02x}")).collect::<String>() + &"ab".repeat(32 - id.len())
}

const NOW: i64 = 1_700_000_000;

async fn join_token_lifecycle(db: TestDb) {
    let store = db.open().await;
    store
        .create_join_token(&token("once", 1, NOW + 600))
        .await
        .unwrap();
    store
        .create_join_token(&token("stale", 5, NOW - 1))
        .await
        .unwrap();
    store
        .create_join_token(&token("revoked", 5, NOW + 600))
        .await
        .unwrap();

    // Single use: once, then never again.
    assert_eq!(
        store
            .consume_join_token(&hash_of("once"), NOW)
            .await
            .unwrap(),
        ConsumeOutcome::Accepted {
            id: "once".into(),
            identity: "spiffe://mesh.local/ns/default/sa/once".into()
        }
    );
    assert_eq!(
        store
            .consume_join_token(&hash_of("once"), NOW)
            .await
            .unwrap(),
        ConsumeOutcome::UsedUp
    );
    // The hash matches whatever the case of its hex digits.
    assert_eq!(
        store
            .consume_join_token(&hash_of("once").to_uppercase(), NOW)
            .await
            .unwrap(),
        ConsumeOutcome::UsedUp
    );

    assert_eq!(
        store
            .consume_join_token(&hash_of("stale"), NOW)
            .await
            .unwrap(),
        ConsumeOutcome::Expired
    );

    store.revoke_join_token("revoked").await.unwrap();
    store.revoke_join_token("revoked").await.unwrap();
    assert_eq!(
        store
            .consume_join_token(&hash_of("revoked"), NOW)
            .await
            .unwrap(),
        ConsumeOutcome::Revoked
    );

    assert_eq!(
        store
            .consume_join_token(&hash_of("nobody"), NOW)
            .await
            .unwrap(),
        ConsumeOutcome::Unknown
    );

    let err = store.revoke_join_token("nobody").await.unwrap_err();
    assert_eq!(err.to_string(), "join token nobody not found");
    let err = store
        .create_join_token(&token("once", 1, NOW + 600))
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");

    let listed = store.list_join_tokens().await.unwrap();
    let by_id: BTreeMap<_, _> = listed.iter().map(|t| (t.id.as_str(), t)).collect();
    assert_eq!(by_id.len(), 3);
    assert_eq!(by_id["once"].uses_remaining, 0);
    assert_eq!(by_id["once"].last_used_at, Some(NOW));
    assert_eq!(
        by_id["stale"].uses_remaining, 5,
        "a refused use takes nothing"
    );
    assert!(by_id["revoked"].revoked_at.is_some());
    assert!(by_id["once"].revoked_at.is_none());
}

async fn concurrent_consumers_take_exactly_the_available_uses(db: TestDb) {
    let store = db.open().await;
    for (id, uses) in [("single", 1), ("triple", 3)] {
        store
            .create_join_token(&token(id, uses, NOW + 600))
            .await
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let store = store.clone();
            let hash = hash_of(id);
            tasks.spawn(async move { store.consume_join_token(&hash, NOW).await.unwrap() });
        }
        let outcomes = tasks.join_all().await;
        let accepted = outcomes
            .iter()
            .filter(|o| matches!(o, ConsumeOutcome::Accepted { .. }))
            .count();
        let used_up = outcomes
            .iter()
            .filter(|o| **o == ConsumeOutcome::UsedUp)
            .count();
        assert_eq!(
            (accepted, used_up),
            (uses as usize, 8 - uses as usize),
            "{id}: {outcomes:?}"
        );
    }
}

fn ca_state(marker: &[u8], phase: &str) -> CaStateRecord {
    CaStateRecord {
        signing_key: marker.to_vec(),
        cert_chain_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
        roots_pem: vec![
            "-----BEGIN CERTIFICATE-----\nROOT1\n-----END CERTIFICATE-----\n".into(),
            "-----BEGIN CERTIFICATE-----\nROOT2\n-----END CERTIFICATE-----\n".into(),
        ],
        rotation_phase: phase.into(),
        rotation_data: r#"{"acked":3,"total":5}"#.into(),
        pending_key: None,
        previous_key: None,
        updated_at: NOW,
        version: 0,
    }
}

/// `record` as stored at `version` (the store sets the version).
fn at_version(record: &CaStateRecord, version: i64) -> CaStateRecord {
    CaStateRecord {
        version,
        ..record.clone()
    }
}

async fn ca_state_round_trip_and_overwrite(db: TestDb) {
    let store = db.open().await;
    assert_eq!(store.load_ca_state().await.unwrap(), None);

    let first = ca_state(b"encrypted-key-1", "idle");
    store.save_ca_state(&first).await.unwrap();
    assert_eq!(
        store.load_ca_state().await.unwrap(),
        Some(at_version(&first, 1))
    );

    let second = CaStateRecord {
        pending_key: Some(b"encrypted-key-2".to_vec()),
        previous_key: Some(b"encrypted-key-0".to_vec()),
        roots_pem: vec!["-----BEGIN CERTIFICATE-----\nROOT2\n-----END CERTIFICATE-----\n".into()],
        updated_at: NOW + 60,
        ..ca_state(b"encrypted-key-1b", "adding-root")
    };
    store.save_ca_state(&second).await.unwrap();
    assert_eq!(
        store.load_ca_state().await.unwrap(),
        Some(at_version(&second, 2))
    );

    // Back to no pending key: NULLs overwrite too.
    let third = ca_state(b"encrypted-key-3", "idle");
    store.save_ca_state(&third).await.unwrap();
    assert_eq!(
        store.load_ca_state().await.unwrap(),
        Some(at_version(&third, 3))
    );

    // Debug never shows key bytes.
    let shown = format!("{second:?}");
    assert!(!shown.contains("101, 110, 99") && !shown.contains("encrypted-key"));
    assert!(shown.contains("<16 bytes>"), "{shown}");
}

async fn ca_key_blobs_are_stored_byte_for_byte(db: TestDb) {
    // Every byte value, NULs and invalid UTF-8 included.
    let marker: Vec<u8> = b"\x00MESH-MARKER\xff\xfe"
        .iter()
        .copied()
        .chain(0..=255u8)
        .chain(std::iter::repeat_n(0u8, 7))
        .collect();
    let mut state = ca_state(&marker, "idle");
    state.pending_key = Some(marker.iter().rev().copied().collect());
    state.previous_key = Some(Vec::new());

    let store = db.open().await;
    store.save_ca_state(&state).await.unwrap();
    store.close().await;

    // Read back through a fresh pool, so from the database rather than any cache.
    let loaded = db.open().await.load_ca_state().await.unwrap().unwrap();
    assert_eq!(loaded.signing_key, marker);
    assert_eq!(loaded.pending_key, state.pending_key);
    assert_eq!(loaded.previous_key, Some(Vec::new()), "empty, not NULL");
}

fn cert(serial: &str, identity: &str, issuer: &str, not_before: i64, not_after: i64) -> IssuedCert {
    IssuedCert {
        serial_hex: serial.into(),
        identity: identity.into(),
        issuer_fingerprint: issuer.into(),
        not_before,
        not_after,
        sidecar: None,
        superseded_at: None,
    }
}

async fn certificates_filter_by_validity_and_group_by_issuer(db: TestDb) {
    const WEB: &str = "spiffe://mesh.local/ns/prod/sa/web";
    const DB: &str = "spiffe://mesh.local/ns/prod/sa/db";
    let store = db.open().await;
    let certs = [
        cert("01", WEB, "aa11", NOW - 7200, NOW - 3600), // expired
        cert("02", WEB, "aa11", NOW - 1800, NOW + 1800), // valid, old issuer
        cert("03", WEB, "bb22", NOW - 60, NOW + 3540),   // valid, new issuer
        cert("04", DB, "bb22", NOW - 60, NOW + 3540),    // valid, new issuer
        cert("05", DB, "bb22", NOW + 60, NOW + 3660),    // not yet valid
    ];
    for c in &certs {
        store.record_certificate(c).await.unwrap();
    }
    let mut with_sidecar = cert("06", DB, "BB22", NOW - 10, NOW);
    with_sidecar.sidecar = Some("db-7f9c".into());
    store.record_certificate(&with_sidecar).await.unwrap();

    let serials =
        |list: Vec<IssuedCert>| list.into_iter().map(|c| c.serial_hex).collect::<Vec<_>>();
    assert_eq!(
        serials(store.list_certificates(None, None).await.unwrap()),
        ["01", "06", "02", "03", "04", "05"],
        "ordered by expiry"
    );
    assert_eq!(
        serials(store.list_certificates(Some(NOW), None).await.unwrap()),
        ["06", "02", "03", "04"],
        "valid at NOW, both ends inclusive"
    );
    assert_eq!(
        serials(store.list_certificates(Some(NOW), Some(WEB)).await.unwrap()),
        ["02", "03"]
    );
    assert_eq!(
        serials(store.list_certificates(None, Some(DB)).await.unwrap()),
        ["06", "04", "05"]
    );
    let listed = store.list_certificates(None, Some(DB)).await.unwrap();
    assert_eq!(
        listed[0].issuer_fingerprint, "bb22",
        "hex is stored lowercase"
    );
    assert_eq!(listed[0].sidecar.as_deref(), Some("db-7f9c"));

    assert_eq!(
        store.live_certificates_by_issuer(NOW).await.unwrap(),
        [("aa11".to_owned(), 1), ("bb22".to_owned(), 4)]
    );
    // Once the old issuer's last certificate expires, it drops out.
    assert_eq!(
        store.live_certificates_by_issuer(NOW + 1801).await.unwrap(),
        [("bb22".to_owned(), 3)]
    );

    let err = store.record_certificate(&certs[1]).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(
        err.to_string(),
        "certificate with serial 02 from issuer aa11 already exists"
    );
    // The same serial from another issuer is another certificate.
    store
        .record_certificate(&cert("02", WEB, "cc33", NOW, NOW + 10))
        .await
        .unwrap();

    assert_eq!(store.prune_certificates(NOW).await.unwrap(), 1);
    assert_eq!(store.list_certificates(None, None).await.unwrap().len(), 6);
}

/// What the CA rotation reads: which sidecars hold a certificate of an issuer, and which
/// certificates of an issuer are still in use (neither expired nor superseded by a renewal).
async fn a_renewal_supersedes_the_certificate_it_presented(db: TestDb) {
    const WEB: &str = "spiffe://mesh.local/ns/prod/sa/web";
    let store = db.open().await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let issue = |c: IssuedCert, renewed_with: Option<&str>| meshd::store::IssueRecord {
        audit: AuditEntry {
            actor: "mtls".into(),
            action: "certificate.sign".into(),
            target: WEB.into(),
            outcome: AuditOutcome::Ok,
            detail: format!("serial {}", c.serial_hex),
        },
        cert: c,
        renewed_with: renewed_with.map(str::to_string),
    };
    let mut first = cert("0A", WEB, "old", now - 10, now + 3600);
    first.sidecar = Some("web-1".into());
    store.record_issues(&[issue(first, None)]).await.unwrap();
    assert_eq!(
        store.certificates_in_use("old", now, 5).await.unwrap(),
        (1, vec![WEB.to_string()])
    );
    // Renewed from the new CA, presenting the first certificate: that one is no longer used.
    let mut second = cert("0B", WEB, "new", now, now + 3600);
    second.sidecar = Some("web-1".into());
    store
        .record_issues(&[issue(second, Some("0a"))])
        .await
        .unwrap();
    // Another identity presenting the same serial supersedes nothing of WEB's.
    let other = cert(
        "0F",
        "spiffe://mesh.local/ns/prod/sa/other",
        "new",
        now,
        now + 3600,
    );
    store
        .record_issues(&[issue(other, Some("0b"))])
        .await
        .unwrap();
    assert_eq!(
        store.certificates_in_use("old", now, 5).await.unwrap(),
        (0, vec![])
    );
    assert_eq!(
        store.certificates_in_use("new", now, 5).await.unwrap().0,
        2,
        "0B stays in use: only the identity's own certificate is superseded"
    );
    // A superseded certificate is listed as such, and no longer counts as live.
    let listed = store.list_certificates(Some(now), Some(WEB)).await.unwrap();
    let mut superseded: Vec<_> = listed
        .iter()
        .map(|c| (c.serial_hex.as_str(), c.superseded_at.is_some()))
        .collect();
    superseded.sort();
    assert_eq!(superseded, [("0a", true), ("0b", false)]);
    assert_eq!(
        store.live_certificates_by_issuer(now).await.unwrap(),
        [("new".to_owned(), 2)]
    );
    // The gate of a switch: which connected sidecars hold a certificate of the wanted CA.
    use meshd::store::{GateCount, Registration, RegistrationEvent, SidecarGate};
    store.heartbeat("meshd-a", now).await.unwrap();
    let sidecar = |id: &str| {
        RegistrationEvent::Connected(Registration {
            id: id.into(),
            namespace: "prod".into(),
            service: "web".into(),
            labels: "{}".into(),
            inbound_address: "10.0.0.1:15006".into(),
            identity: WEB.into(),
            connected_at: now,
            disconnected_at: None,
            replica: "meshd-a".into(),
        })
    };
    store
        .record_registrations(&[sidecar("web-1"), sidecar("web-2")])
        .await
        .unwrap();
    let reissued = |issuer: &'static str| {
        let store = store.clone();
        async move {
            store
                .gate_count(now - 15, SidecarGate::Certificate { issuer, now }, 5)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        reissued("NEW").await,
        GateCount {
            connected: 2,
            done: 1,
            stragglers: vec!["web-2".into()]
        }
    );
    assert_eq!(reissued("other").await.done, 0);

    // Group commit: several signatures' records in one transaction, all or nothing.
    let issue = |serial: &str, renewed_with: Option<&str>| {
        issue(cert(serial, WEB, "new", now, now + 3600), renewed_with)
    };
    store
        .record_issues(&[issue("0C", Some("0b")), issue("0D", None)])
        .await
        .unwrap();
    assert_eq!(store.certificates_in_use("new", now, 5).await.unwrap().0, 3);
    assert_eq!(store.list_audit(10, None).await.unwrap().len(), 5);
    let err = store
        .record_issues(&[issue("0E", None), issue("0C", None)])
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(
        store
            .list_certificates(None, Some(WEB))
            .await
            .unwrap()
            .len(),
        4,
        "0E was not kept either"
    );
    assert_eq!(store.list_audit(10, None).await.unwrap().len(), 5);
}

async fn registrations_remember_who_was_connected(db: TestDb) {
    use meshd::store::{Registration, RegistrationEvent};
    let store = db.open().await;
    let reg = |id: &str, at: i64| Registration {
        id: id.into(),
        namespace: "shop".into(),
        service: "cart".into(),
        labels: r#"{"version":"v1"}"#.into(),
        inbound_address: "10.0.0.1:15006".into(),
        identity: "spiffe://mesh.local/ns/shop/sa/cart".into(),
        connected_at: at,
        disconnected_at: None,
        replica: "meshd-a".into(),
    };
    store
        .record_registrations(&[
            RegistrationEvent::Connected(reg("cart-1", NOW)),
            RegistrationEvent::Connected(reg("cart-2", NOW)),
            RegistrationEvent::Connected(reg("cart-3", NOW - 900)),
            RegistrationEvent::Disconnected {
                id: "cart-2".into(),
                replica: "meshd-a".into(),
                at: NOW + 5,
            },
            RegistrationEvent::Disconnected {
                id: "cart-3".into(),
                replica: "meshd-a".into(),
                at: NOW - 600,
            },
        ])
        .await
        .unwrap();
    let ids = |list: Vec<Registration>| list.into_iter().map(|r| r.id).collect::<Vec<_>>();
    // Connected now, or gone within the window; not the one gone long ago.
    assert_eq!(
        ids(store.recent_registrations(NOW).await.unwrap()),
        ["cart-1", "cart-2"]
    );
    // A reconnect clears the disconnection.
    store
        .record_registrations(&[RegistrationEvent::Connected(reg("cart-3", NOW + 10))])
        .await
        .unwrap();
    let recent = store.recent_registrations(NOW + 60).await.unwrap();
    assert_eq!(ids(recent.clone()), ["cart-1", "cart-3"]);
    assert_eq!(recent[1], reg("cart-3", NOW + 10));
    assert_eq!(
        store.prune_registrations(NOW + 6).await.unwrap(),
        1,
        "cart-2"
    );
}

async fn ca_state_is_created_once_and_replaced_only_at_the_version_read(db: TestDb) {
    let store = db.open().await;
    let first = ca_state(b"key-of-replica-a", "idle");
    assert!(store.create_ca_state(&first).await.unwrap(), "created");
    // A second replica starting on the same database keeps the first one's CA.
    let other = ca_state(b"key-of-replica-b", "idle");
    assert!(!store.create_ca_state(&other).await.unwrap(), "not created");
    let stored = store.load_ca_state().await.unwrap().unwrap();
    assert_eq!(stored, at_version(&first, 1));

    // Compare-and-swap: a write at the version read wins once; the loser writes nothing.
    let step = ca_state(b"key-of-replica-a", "prepare");
    assert_eq!(store.replace_ca_state(&step, 1).await.unwrap(), Some(2));
    let late = ca_state(b"key-of-replica-b", "switch");
    assert_eq!(store.replace_ca_state(&late, 1).await.unwrap(), None);
    assert_eq!(
        store.load_ca_state().await.unwrap(),
        Some(at_version(&step, 2))
    );
}

async fn the_fleet_of_every_live_replica_with_the_bundle_each_sidecar_acked(db: TestDb) {
    use meshd::store::{ConnectedSidecar, Registration, RegistrationEvent};
    let store = db.open().await;
    let reg = |id: &str, replica: &str| {
        RegistrationEvent::Connected(Registration {
            id: id.into(),
            namespace: "shop".into(),
            service: "cart".into(),
            labels: "{}".into(),
            inbound_address: "10.0.0.1:15006".into(),
            identity: format!("spiffe://mesh.local/ns/shop/sa/{id}"),
            connected_at: NOW,
            disconnected_at: None,
            replica: replica.into(),
        })
    };
    let acked = |id: &str, replica: &str, version: &str| RegistrationEvent::BundleAcked {
        id: id.into(),
        replica: replica.into(),
        version: version.into(),
    };
    store.heartbeat("a", NOW).await.unwrap();
    store.heartbeat("b", NOW).await.unwrap();
    store
        .record_registrations(&[
            reg("s1", "a"),
            reg("s2", "b"),
            reg("s3", "b"),
            acked("s1", "a", "v1"),
            acked("s2", "b", "v1"),
            acked("s2", "b", "v2"),
            // A late report of a replica the sidecar left does not touch its new row.
            acked("s3", "a", "v9"),
        ])
        .await
        .unwrap();
    let fleet = store.connected_sidecars(NOW - 15).await.unwrap();
    let seen: Vec<(&str, &str, Option<&str>)> = fleet
        .iter()
        .map(|s: &ConnectedSidecar| {
            (
                s.registration.id.as_str(),
                s.registration.replica.as_str(),
                s.bundle_version.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("s1", "a", Some("v1")),
            ("s2", "b", Some("v2")),
            ("s3", "b", None)
        ]
    );
    use meshd::store::{GateCount, SidecarGate};
    assert_eq!(
        store
            .gate_count(NOW - 15, SidecarGate::Bundle("v1"), 5)
            .await
            .unwrap(),
        GateCount {
            connected: 3,
            done: 1,
            stragglers: vec!["s2".into(), "s3".into()]
        }
    );
    assert_eq!(
        store
            .gate_count(NOW - 15, SidecarGate::Bundle("v2"), 1)
            .await
            .unwrap(),
        GateCount {
            connected: 3,
            done: 1,
            stragglers: vec!["s1".into()]
        }
    );
    // s2 fails over to a: its new stream has acked nothing yet, and b's late disconnect
    // report does not end it.
    store
        .record_registrations(&[
            reg("s2", "a"),
            RegistrationEvent::Disconnected {
                id: "s2".into(),
                replica: "b".into(),
                at: NOW + 1,
            },
        ])
        .await
        .unwrap();
    // Replica b stops heartbeating (it died): its sidecars no longer count.
    store.heartbeat("a", NOW + 30).await.unwrap();
    let fleet = store.connected_sidecars(NOW + 30 - 15).await.unwrap();
    let ids: Vec<(&str, Option<&str>)> = fleet
        .iter()
        .map(|s| (s.registration.id.as_str(), s.bundle_version.as_deref()))
        .collect();
    assert_eq!(ids, [("s1", Some("v1")), ("s2", None)]);
    // Any replica closes the streams dead b left open, and forgets b.
    assert_eq!(
        store.reap_replicas(NOW + 30 - 15, NOW + 30).await.unwrap(),
        1
    );
    let recent = store.recent_registrations(NOW + 30).await.unwrap();
    let s3 = recent.iter().find(|r| r.id == "s3").unwrap();
    assert_eq!(s3.disconnected_at, Some(NOW + 30), "{recent:?}");
    assert_eq!(
        store.reap_replicas(NOW + 30 - 15, NOW + 31).await.unwrap(),
        0
    );
    // A replica that shuts down cleanly is forgotten at once.
    store.forget_replica("a").await.unwrap();
    assert!(
        store
            .connected_sidecars(NOW + 30 - 15)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn audit_is_newest_first_with_limit_and_since(db: TestDb) {
    let store = db.open().await;
    assert!(store.list_audit(10, None).await.unwrap().is_empty());
    let mut ids = Vec::new();
    for (i, outcome) in [AuditOutcome::Ok, AuditOutcome::Denied, AuditOutcome::Error]
        .into_iter()
        .enumerate()
    {
        let id = store
            .audit(&AuditEntry {
                actor: "admin-token:ops".into(),
                action: "join_token.create".into(),
                target: format!("jt-{i}"),
                outcome,
                detail: format!("attempt {i}"),
            })
            .await
            .unwrap();
        ids.push(id);
    }
    store
        .apply_document("Service", "default", "foo", BODY_V1, "alice")
        .await
        .unwrap();

    let all = store.list_audit(10, None).await.unwrap();
    let seen: Vec<_> = all
        .iter()
        .map(|r| (r.action.as_str(), r.target.as_str(), r.outcome))
        .collect();
    assert_eq!(
        seen,
        [
            ("document.apply", "Service default/foo", AuditOutcome::Ok),
            ("join_token.create", "jt-2", AuditOutcome::Error),
            ("join_token.create", "jt-1", AuditOutcome::Denied),
            ("join_token.create", "jt-0", AuditOutcome::Ok),
        ],
        "newest first"
    );
    assert_eq!(all[0].actor, "alice");
    assert_eq!(all[3].id, ids[0]);
    assert_eq!(all[3].detail, "attempt 0");
    assert!(
        all.windows(2)
            .all(|w| w[0].id > w[1].id && w[0].at >= w[1].at)
    );

    let newest_two = store.list_audit(2, None).await.unwrap();
    assert_eq!(newest_two, all[..2]);
    let after_first = store.list_audit(10, Some(ids[0])).await.unwrap();
    assert_eq!(after_first, all[..3]);
}

async fn ping_answers(db: TestDb) {
    let store = db.open().await;
    store.ping().await.unwrap();
    let expected = if db.url.starts_with("sqlite:") {
        Backend::Sqlite
    } else {
        Backend::Postgres
    };
    assert_eq!(store.backend(), expected);
}

// --- SQLite only: the embedded default's file handling ---

#[tokio::test]
async fn sqlite_default_file_is_created_in_wal_mode() {
    use sqlx::Connection;

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("not/yet/there");
    let store = Store::open(&Store::default_sqlite_url(&data_dir))
        .await
        .unwrap();
    store
        .apply_document("Service", "default", "foo", BODY_V1, "alice")
        .await
        .unwrap();
    let file = data_dir.join(meshd::store::SQLITE_FILE_NAME);
    assert!(file.is_file());

    // WAL is a property of the file: any connection sees it.
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    // The key blobs are BLOBs, not text that a driver might re-encode.
    store
        .save_ca_state(&ca_state(b"\xffkey", "idle"))
        .await
        .unwrap();
    let kind: String = sqlx::query_scalar("SELECT typeof(signing_key) FROM ca_state")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(kind, "blob");
}

#[tokio::test]
async fn open_errors_say_what_was_wrong() {
    let err = Store::open("mysql://db/mesh").await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("unsupported database URL mysql://db/mesh"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "not a directory").unwrap();
    let url = format!("sqlite://{}/meshd.db?mode=rwc", file.display());
    let err = Store::open(&url).await.unwrap_err().to_string();
    assert!(err.contains("meshd.db?mode=rwc"), "{err}");
    assert!(err.starts_with("cannot "), "{err}");

    // A read-only open of a missing file is not turned into a create.
    let missing = format!("sqlite://{}/missing.db?mode=ro", dir.path().display());
    let err = Store::open(&missing).await.unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("cannot open database {missing}: ")),
        "{err}"
    );
    assert!(!dir.path().join("missing.db").exists());

    // Passwords never reach messages.
    let err = Store::open("postgres://meshd:hunter2@127.0.0.1:1/mesh")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("cannot open database postgres://meshd:***@127.0.0.1:1/mesh: "),
        "{err}"
    );
    assert!(!err.contains("hunter2"));
}

/// Two replicas' stores on one PostgreSQL: only one holds the rotation lease; it stays with
/// its holder; dropping the holder (its session closes, as when a replica dies) frees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_only_one_replica_holds_the_lease_until_it_goes() {
    use meshd::store::LeaseKey;
    let db = TestDb::postgres().await;
    let (a, b) = (db.open().await, db.open().await);
    let mut lease_a = a.lease(LeaseKey::CaRotation);
    let mut lease_b = b.lease(LeaseKey::CaRotation);
    assert!(lease_a.poll().await, "a takes the free lease");
    assert!(!lease_b.poll().await, "b cannot while a holds it");
    assert!(lease_a.poll().await, "a keeps it");
    assert!(!lease_b.poll().await);

    drop(lease_a);
    poll_until_held(&mut lease_b, "b to take the lease a dropped").await;
    let mut again_a = a.lease(LeaseKey::CaRotation);
    assert!(!again_a.poll().await, "now b holds it");
    lease_b.release().await;
    poll_until_held(&mut again_a, "a to take it back").await;
}

/// Changes to the documents are serialized across replicas: while one replica holds the
/// document write lock, another waits for it, and gets it once the first lets go.
#[tokio::test]
async fn postgres_one_replica_at_a_time_changes_the_documents() {
    let db = TestDb::postgres().await;
    let (a, b) = (db.open().await, db.open().await);
    let held = a.document_write_lock().await.unwrap();
    let waited = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        b.document_write_lock(),
    )
    .await;
    assert!(waited.is_err(), "b must wait while a changes the documents");
    drop(held);
    let got = tokio::time::timeout(std::time::Duration::from_secs(20), b.document_write_lock())
        .await
        .expect("b gets the lock once a let go");
    assert!(got.is_ok());
    // SQLite has one replica: there is nothing to wait for.
    let sqlite = TestDb::sqlite();
    let one = sqlite.open().await;
    let _first = one.document_write_lock().await.unwrap();
    let _second = one.document_write_lock().await.unwrap();
}

/// Polls `lease` until it is held, failing after a deadline.
async fn poll_until_held(lease: &mut meshd::store::Lease, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !lease.poll().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// With SQLite there is one replica: it always holds the lease.
#[tokio::test]
async fn sqlite_the_one_replica_holds_the_lease() {
    let db = TestDb::sqlite();
    let store = db.open().await;
    assert!(store.lease(meshd::store::LeaseKey::CaRotation).poll().await);
}

/// A change written through one replica's store is notified to another's (LISTEN/NOTIFY).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_changes_are_notified_to_other_replicas() {
    use meshd::store::Topic;
    use std::time::Duration;
    let db = TestDb::postgres().await;
    let (a, b) = (db.open().await, db.open().await);
    let changes = b.changes();
    let mut ca = changes.subscribe(Topic::Ca);
    let mut documents = changes.subscribe(Topic::Documents);
    // The listener wakes every topic once it listens (whatever happened before).
    for topic in [&mut ca, &mut documents] {
        tokio::time::timeout(Duration::from_secs(20), topic.changed())
            .await
            .unwrap()
            .unwrap();
    }

    a.save_ca_state(&ca_state(b"k", "idle")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), ca.changed())
        .await
        .expect("ca_state change notified")
        .unwrap();
    assert!(!documents.has_changed().unwrap(), "only the CA topic");

    a.apply_document("HTTPRoute", "default", "r", BODY_V1, "alice")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), documents.changed())
        .await
        .expect("document change notified")
        .unwrap();
    assert_eq!(b.latest_revision().await.unwrap(), 1);
}
