-- Several meshd replicas over one database (control-plane/src/store/replicas.rs). With SQLite
-- there is one replica, but the columns are the same as in ../postgres/0005_replicas.sql so
-- that every query is written once; the NOTIFY triggers exist only there.

ALTER TABLE ca_state ADD COLUMN version INTEGER NOT NULL DEFAULT 0;

ALTER TABLE sidecar_registrations ADD COLUMN replica TEXT NOT NULL DEFAULT '';
ALTER TABLE sidecar_registrations ADD COLUMN bundle_version TEXT;
CREATE INDEX sidecar_registrations_connected ON sidecar_registrations (replica)
    WHERE disconnected_at IS NULL;

CREATE TABLE meshd_replicas (
    name         TEXT    PRIMARY KEY,
    heartbeat_at INTEGER NOT NULL
);
