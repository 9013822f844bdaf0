-- meshd store, SQLite flavour. Keep in step with ../postgres/0001_initial.sql: same tables,
-- columns and constraints; only the types differ (INTEGER/BLOB here, BIGINT/BYTEA there).
-- Timestamps are unix seconds.

-- The global revision counter: one row, only ever incremented (see control-plane/src/store.rs).
CREATE TABLE revision_counter (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO revision_counter (id, value) VALUES (1, 0);

-- Every change to a config document, never deleted.
CREATE TABLE document_history (
    revision  INTEGER PRIMARY KEY,
    kind      TEXT    NOT NULL,
    namespace TEXT    NOT NULL,
    name      TEXT    NOT NULL,
    op        TEXT    NOT NULL CHECK (op IN ('create', 'update', 'delete')),
    body      TEXT,            -- NULL for a delete
    labels    TEXT,            -- JSON object; NULL for a delete
    actor     TEXT    NOT NULL,
    at        INTEGER NOT NULL,
    CHECK ((op = 'delete') = (body IS NULL))
);
CREATE INDEX document_history_by_document
    ON document_history (kind, namespace, name, revision);

-- Config documents as they are now.
CREATE TABLE documents (
    kind       TEXT    NOT NULL,
    namespace  TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    labels     TEXT    NOT NULL,   -- JSON object
    revision   INTEGER NOT NULL REFERENCES document_history (revision),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE INDEX documents_by_namespace ON documents (namespace);

-- The CA's state: exactly one row once the CA is initialized. Key blobs are encrypted by the
-- caller before they get here.
CREATE TABLE ca_state (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    signing_key    BLOB    NOT NULL,
    cert_chain_pem TEXT    NOT NULL,
    roots_pem      TEXT    NOT NULL,   -- JSON array of PEM strings
    rotation_phase TEXT    NOT NULL,
    rotation_data  TEXT    NOT NULL,   -- JSON, opaque to the store
    pending_key    BLOB,
    previous_key   BLOB,
    updated_at     INTEGER NOT NULL
);

CREATE TABLE issued_certificates (
    issuer_fingerprint TEXT    NOT NULL,
    serial_hex         TEXT    NOT NULL,
    identity           TEXT    NOT NULL,
    not_before         INTEGER NOT NULL,
    not_after          INTEGER NOT NULL,
    sidecar            TEXT,
    PRIMARY KEY (issuer_fingerprint, serial_hex)
);
CREATE INDEX issued_certificates_by_not_after ON issued_certificates (not_after);
CREATE INDEX issued_certificates_by_identity ON issued_certificates (identity);

-- Join tokens, by the SHA-256 of the secret only.
CREATE TABLE join_tokens (
    id             TEXT    PRIMARY KEY,
    token_hash     TEXT    NOT NULL UNIQUE,
    identity       TEXT    NOT NULL,
    expires_at     INTEGER NOT NULL,
    uses_remaining INTEGER NOT NULL CHECK (uses_remaining >= 0),
    created_by     TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    last_used_at   INTEGER
);

-- AUTOINCREMENT: ids are never reused, even after the newest rows are deleted.
CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    target  TEXT    NOT NULL,
    outcome TEXT    NOT NULL CHECK (outcome IN ('ok', 'denied', 'error')),
    detail  TEXT    NOT NULL
);
