-- TLS certificates the CA issues to Nexus services: its own server certificate and callers'
-- client certificates (role in a URI SAN). Not MICs: not in the issuance log. Revoked ones are
-- listed on the same CRL as MICs (same issuer), which the CA's TLS verifier also uses.
CREATE TABLE service_certs (
    serial      TEXT PRIMARY KEY,          -- lowercase hex, no leading zero bytes
    role        TEXT NOT NULL,             -- ca-server, controller, cloud-api, ...
    name        TEXT NOT NULL,             -- subject CN
    der         BYTEA NOT NULL,
    not_after   TIMESTAMPTZ NOT NULL,
    issued_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ,
    reason      SMALLINT CHECK (reason BETWEEN 0 AND 10 AND reason <> 7 AND reason <> 8),
    CHECK ((revoked_at IS NULL) = (reason IS NULL))
);
CREATE INDEX service_certs_revoked ON service_certs (revoked_at) WHERE revoked_at IS NOT NULL;
