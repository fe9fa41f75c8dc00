-- MICs issued through the CA for a tenant's model identities.
CREATE TABLE mic_certificates (
    serial             text NOT NULL,
    tenant_id          uuid NOT NULL REFERENCES tenants(id),
    model_identity_id  uuid NOT NULL,
    model_uri          text NOT NULL,
    fingerprint_sha256 text NOT NULL,
    not_before         timestamptz NOT NULL,
    not_after          timestamptz NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, serial)
);
CREATE INDEX mic_certificates_model ON mic_certificates (tenant_id, model_identity_id);
