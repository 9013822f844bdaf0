-- Several meshd replicas over one PostgreSQL (control-plane/src/store/replicas.rs).
-- Keep in step with ../sqlite/0005_replicas.sql (same columns; the NOTIFY triggers exist only
-- here: SQLite has one replica and nobody to tell).

-- Every write of the CA state takes the next version; a writer names the version it read, so
-- two replicas never overwrite each other's rotation step unseen (compare-and-swap).
ALTER TABLE ca_state ADD COLUMN version BIGINT NOT NULL DEFAULT 0;

-- Which replica holds each sidecar's stream, and the TrustBundle version the sidecar ACKed
-- there (NULL: none yet): the rotation's gates count the sidecars of every replica.
ALTER TABLE sidecar_registrations ADD COLUMN replica TEXT NOT NULL DEFAULT '';
ALTER TABLE sidecar_registrations ADD COLUMN bundle_version TEXT;
CREATE INDEX sidecar_registrations_connected ON sidecar_registrations (replica)
    WHERE disconnected_at IS NULL;

-- Live replicas: each one refreshes its row every few seconds; the sidecars of a replica whose
-- heartbeat is old (it died without closing their streams) no longer count as connected.
CREATE TABLE meshd_replicas (
    name         TEXT    PRIMARY KEY,
    heartbeat_at BIGINT  NOT NULL
);

-- Tell every listening replica when the CA state, a document or the set of connected sidecars
-- changed (LISTEN/NOTIFY). A trigger rather than a NOTIFY in the code: every writer notifies,
-- and only once it committed; PostgreSQL folds the notifications of one transaction into one.
CREATE FUNCTION meshd_notify_ca() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('meshd_ca', '');
    RETURN NULL;
END $$;
CREATE TRIGGER ca_state_changed AFTER INSERT OR UPDATE ON ca_state
    FOR EACH STATEMENT EXECUTE FUNCTION meshd_notify_ca();

CREATE FUNCTION meshd_notify_documents() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('meshd_documents', '');
    RETURN NULL;
END $$;
CREATE TRIGGER documents_changed AFTER INSERT ON document_history
    FOR EACH STATEMENT EXECUTE FUNCTION meshd_notify_documents();

-- Sidecars as endpoints: a stream opened or closed (not a bundle ACK, not a heartbeat), or a
-- replica that shut down.
CREATE FUNCTION meshd_notify_sidecars() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('meshd_sidecars', '');
    RETURN NULL;
END $$;
CREATE TRIGGER sidecars_changed
    AFTER INSERT OR DELETE OR UPDATE OF disconnected_at, replica, service, labels,
        inbound_address, identity ON sidecar_registrations
    FOR EACH STATEMENT EXECUTE FUNCTION meshd_notify_sidecars();
CREATE TRIGGER replicas_changed AFTER DELETE ON meshd_replicas
    FOR EACH STATEMENT EXECUTE FUNCTION meshd_notify_sidecars();
