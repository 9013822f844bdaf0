-- Sidecars as endpoints of their services, so that a restarted meshd keeps serving the
-- endpoints it knew while the sidecars reconnect (instead of telling every client that a
-- service has no endpoints). `disconnected_at` is NULL while the stream is open.
CREATE TABLE sidecar_registrations (
    id              TEXT    PRIMARY KEY,
    namespace       TEXT    NOT NULL,
    service         TEXT    NOT NULL,
    labels          TEXT    NOT NULL,   -- JSON object
    inbound_address TEXT    NOT NULL,
    identity        TEXT    NOT NULL,
    connected_at    BIGINT  NOT NULL,
    disconnected_at BIGINT 
);
