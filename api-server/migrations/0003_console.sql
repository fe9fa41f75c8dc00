-- What the tenant console needs from the API (issue 12).

-- A tenant's slug: the DNS label that names it to the CA and in model URIs
-- (nexus://<slug>/<model>@<version>). Existing tenants keep their id as slug (a UUID is a valid
-- DNS label), so their MICs keep their URIs.
ALTER TABLE tenants ADD COLUMN slug text;
UPDATE tenants SET slug = id::text WHERE slug IS NULL;
ALTER TABLE tenants ALTER COLUMN slug SET NOT NULL;
ALTER TABLE tenants ADD CONSTRAINT tenants_slug_unique UNIQUE (slug);
ALTER TABLE tenants ADD CONSTRAINT tenants_slug_dns_label
    CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$');

-- Endpoint admission, as reported by the RoutingDomain controller: whether the endpoint's MIC
-- meets the domain's trust policy, and why not.
ALTER TABLE endpoints ADD COLUMN admission text NOT NULL DEFAULT 'pending'
    CHECK (admission IN ('pending', 'admitted', 'rejected'));
ALTER TABLE endpoints ADD COLUMN admission_reason text NOT NULL DEFAULT '';
ALTER TABLE endpoints ADD COLUMN admission_observed_at timestamptz;
ALTER TABLE endpoints ADD COLUMN admission_table_version bigint;

-- MICs: what a holder downloads (leaf, chain, root), what the console inspects (the decoded
-- attestation) and revocation. Rows issued before this migration have no DER kept.
ALTER TABLE mic_certificates ADD COLUMN leaf_der bytea;
ALTER TABLE mic_certificates ADD COLUMN chain_der bytea;
ALTER TABLE mic_certificates ADD COLUMN root_der bytea;
ALTER TABLE mic_certificates ADD COLUMN log_index bigint;
ALTER TABLE mic_certificates ADD COLUMN revoked_at timestamptz;
ALTER TABLE mic_certificates ADD COLUMN revocation_reason text;
ALTER TABLE mic_certificates ADD COLUMN id uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE mic_certificates ADD CONSTRAINT mic_certificates_id_unique UNIQUE (id);
CREATE INDEX mic_certificates_page
    ON mic_certificates (tenant_id, model_identity_id, created_at DESC, id DESC);

-- Fleet rollouts as the tenant's clusters report them (one row per cluster and Fabric).
CREATE TABLE cluster_rollouts (
    tenant_id       uuid NOT NULL REFERENCES tenants(id),
    cluster_id      uuid NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    fabric          text NOT NULL,
    phase           text NOT NULL,
    target_version  text NOT NULL,
    nodes_total     integer NOT NULL CHECK (nodes_total >= 0),
    nodes_updated   integer NOT NULL CHECK (nodes_updated >= 0),
    nodes_failed    integer NOT NULL CHECK (nodes_failed >= 0),
    message         text NOT NULL DEFAULT '',
    reported_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_id, fabric)
);
CREATE INDEX cluster_rollouts_tenant ON cluster_rollouts (tenant_id, reported_at DESC);

-- Hourly usage per routing domain (the `domain` dimension; '' when an event has none),
-- maintained in the same statement as usage_hourly. Backfilled from the stored events.
CREATE TABLE usage_hourly_domain (
    tenant_id   uuid NOT NULL,
    meter       text NOT NULL,
    domain      text NOT NULL,
    hour        timestamptz NOT NULL,
    quantity    numeric NOT NULL,
    events      bigint NOT NULL,
    PRIMARY KEY (tenant_id, meter, domain, hour)
);
INSERT INTO usage_hourly_domain (tenant_id, meter, domain, hour, quantity, events)
SELECT tenant_id, meter, coalesce(dimensions->>'domain', ''), date_trunc('hour', ts, 'UTC'),
       sum(quantity), count(*)
  FROM usage_events GROUP BY 1, 2, 3, 4;
