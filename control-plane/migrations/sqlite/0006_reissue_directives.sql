-- Forced re-issue directives (`meshctl certs reissue`), kept so that a restarted meshd and
-- every replica put them in force (control-plane/src/reissue.rs). Keep in step with
-- ../postgres/0006_reissue_directives.sql.
CREATE TABLE reissue_directives (
    generation     BIGINT  PRIMARY KEY,
    -- The directive as JSON (xds::view::Directive).
    directive      TEXT    NOT NULL,
    reissue_before BIGINT  NOT NULL
);
