-- A certificate is superseded when its holder renewed with it (presented it as the client
-- certificate of a successful renewal): the holder no longer uses it, so a CA rotation need not
-- wait for it to expire before the old root leaves the bundle.
ALTER TABLE issued_certificates ADD COLUMN superseded_at INTEGER;
CREATE INDEX issued_certificates_by_sidecar ON issued_certificates (sidecar);
