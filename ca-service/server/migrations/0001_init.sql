-- NexTrust CA schema. Applied by `sqlx::migrate!()` at start; never edit an applied migration.

-- Tenants the CA issues for (seeded with --tenant; owned upstream by the cloud API).
CREATE TABLE tenants (
    name        TEXT PRIMARY KEY,
    active      BOOLEAN NOT NULL DEFAULT TRUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- CA keys: certificate (public) and the private key sealed with the KEK (AES-256-GCM).
CREATE TABLE ca_keys (
    name        TEXT PRIMARY KEY,          -- 'root', 'intermediate', 'log'
    cert_der    BYTEA,                     -- NULL for the log key
    public_der  BYTEA NOT NULL,            -- SubjectPublicKeyInfo
    sealed_key  BYTEA NOT NULL,
    kek_id      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Groth16 keys for claim proofs (public material; see the crate docs for the trust assumption).
CREATE TABLE zk_keys (
    id              SMALLINT PRIMARY KEY CHECK (id = 1),
    verifying_key   BYTEA NOT NULL,
    proving_key     BYTEA NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Issued MICs; log_index is the position in the Merkle issuance log.
CREATE TABLE certificates (
    serial          TEXT PRIMARY KEY,      -- lowercase hex, no leading zero bytes
    tenant          TEXT NOT NULL REFERENCES tenants (name),
    model_uri       TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,         -- SHA-256 of der, hex
    der             BYTEA NOT NULL,
    not_before      TIMESTAMPTZ NOT NULL,
    not_after       TIMESTAMPTZ NOT NULL,
    log_index       BIGINT NOT NULL UNIQUE CHECK (log_index >= 0),
    leaf_hash       BYTEA NOT NULL CHECK (length(leaf_hash) = 32),
    renewed_from    TEXT REFERENCES certificates (serial),
    request_id      TEXT NOT NULL,
    issued_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE revocations (
    serial      TEXT PRIMARY KEY REFERENCES certificates (serial),
    reason      SMALLINT NOT NULL CHECK (reason BETWEEN 0 AND 10 AND reason <> 7 AND reason <> 8),
    revoked_at  TIMESTAMPTZ NOT NULL,
    request_id  TEXT NOT NULL
);

-- Idempotency: one row per (tenant, request id), with a hash of the request's content.
CREATE TABLE idempotency (
    tenant          TEXT NOT NULL,
    request_id      TEXT NOT NULL,
    operation       TEXT NOT NULL,
    request_hash    BYTEA NOT NULL,
    serial          TEXT NOT NULL,         -- the certificate issued or revoked
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, request_id)
);

-- CRL numbers are monotonic across restarts (RFC 5280 §5.2.3).
CREATE SEQUENCE crl_number_seq;

-- Append-only audit trail.
CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    tenant      TEXT,
    action      TEXT NOT NULL,             -- issue, renew, revoke, ca_init, tenant_seed
    serial      TEXT,
    request_id  TEXT,
    detail      JSONB NOT NULL DEFAULT '{}'::jsonb
);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_log_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
