-- A renewal marks the certificate it presented superseded, found by serial: without this index
-- that update read every certificate of the identity (a fleet sharing one identity made each
-- renewal slower than the last).
CREATE INDEX issued_certificates_by_serial ON issued_certificates (serial_hex);
