-- Nexus Cloud schema. Every tenant-owned row carries tenant_id; every query filters on it.

CREATE TABLE price_plans (
    id          uuid PRIMARY KEY,
    -- NULL: public catalogue plan; otherwise a plan private to one tenant.
    tenant_id   uuid,
    name        text NOT NULL,
    currency    text NOT NULL DEFAULT 'USD',
    spec        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    plan_id     uuid REFERENCES price_plans(id),
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE price_plans ADD CONSTRAINT price_plans_tenant_fk FOREIGN KEY (tenant_id) REFERENCES tenants(id);

CREATE TABLE users (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants(id),
    email       text NOT NULL,
    role        text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, email)
);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants(id),
    user_id     uuid NOT NULL REFERENCES users(id),
    name        text NOT NULL,
    prefix      text NOT NULL UNIQUE,
    salt        bytea NOT NULL,
    hash        bytea NOT NULL,
    scopes      text[] NOT NULL,
    expires_at  timestamptz,
    revoked_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at DESC, id DESC);

CREATE TABLE audit_log (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants(id),
    actor       text NOT NULL,
    action      text NOT NULL,
    target_type text NOT NULL,
    target_id   text NOT NULL,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, created_at DESC, id DESC);

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'P0001';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE TABLE routing_domains (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants(id),
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);
CREATE INDEX routing_domains_page ON routing_domains (tenant_id, created_at DESC, id DESC);

CREATE TABLE endpoints (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES tenants(id),
    domain_id           uuid NOT NULL REFERENCES routing_domains(id) ON DELETE CASCADE,
    name                text NOT NULL,
    capabilities        text[] NOT NULL,
    context_window      integer NOT NULL CHECK (context_window > 0),
    latency_sla_ms      integer NOT NULL CHECK (latency_sla_ms > 0),
    cost_per_1k_tokens  numeric(24, 12) NOT NULL CHECK (cost_per_1k_tokens >= 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (domain_id, name)
);
CREATE INDEX endpoints_page ON endpoints (tenant_id, domain_id, created_at DESC, id DESC);

CREATE TABLE model_identities (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants(id),
    name        text NOT NULL,
    model_digest text NOT NULL,
    claims      jsonb NOT NULL DEFAULT '{}'::jsonb,
    status      text NOT NULL DEFAULT 'registered',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);
CREATE INDEX model_identities_page ON model_identities (tenant_id, created_at DESC, id DESC);

CREATE TABLE clusters (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants(id),
    name        text NOT NULL,
    region      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);
CREATE INDEX clusters_page ON clusters (tenant_id, created_at DESC, id DESC);

-- Metering. The primary key is the exactly-once guarantee: (tenant, idempotency key).
CREATE TABLE usage_events (
    tenant_id       uuid NOT NULL,
    idempotency_key text NOT NULL,
    meter           text NOT NULL,
    quantity        bigint NOT NULL CHECK (quantity >= 0),
    ts              timestamptz NOT NULL,
    dimensions      jsonb NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, idempotency_key)
);

-- Hourly rollup, maintained in the same statement as the insert of the events it counts.
CREATE TABLE usage_hourly (
    tenant_id   uuid NOT NULL,
    meter       text NOT NULL,
    hour        timestamptz NOT NULL,
    quantity    numeric NOT NULL,
    events      bigint NOT NULL,
    PRIMARY KEY (tenant_id, meter, hour)
);

CREATE TABLE invoices (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants(id),
    period        text NOT NULL CHECK (period ~ '^[0-9]{4}-[0-9]{2}$'),
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    plan_id       uuid NOT NULL REFERENCES price_plans(id),
    currency      text NOT NULL,
    status        text NOT NULL CHECK (status IN ('draft', 'finalized')),
    total_micros  bigint NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finalized_at  timestamptz,
    UNIQUE (tenant_id, period)
);
CREATE INDEX invoices_page ON invoices (tenant_id, created_at DESC, id DESC);

CREATE TABLE invoice_lines (
    id                uuid PRIMARY KEY,
    invoice_id        uuid NOT NULL REFERENCES invoices(id),
    tenant_id         uuid NOT NULL REFERENCES tenants(id),
    position          integer NOT NULL,
    meter             text NOT NULL,
    description       text NOT NULL,
    quantity          bigint NOT NULL,
    unit              text NOT NULL,
    unit_price_micros bigint NOT NULL,
    amount_micros     bigint NOT NULL,
    UNIQUE (invoice_id, position)
);

-- A finalized invoice never changes: neither it nor its lines.
CREATE FUNCTION invoice_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE lines_total bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.status = 'finalized' THEN
            RAISE EXCEPTION 'invoice % is finalized', OLD.id USING ERRCODE = 'P0001';
        END IF;
        RETURN OLD;
    END IF;
    IF OLD.status = 'finalized' THEN
        RAISE EXCEPTION 'invoice % is finalized', OLD.id USING ERRCODE = 'P0001';
    END IF;
    IF NEW.status = 'finalized' THEN
        SELECT coalesce(sum(amount_micros), 0) INTO lines_total FROM invoice_lines WHERE invoice_id = NEW.id;
        IF lines_total <> NEW.total_micros THEN
            RAISE EXCEPTION 'invoice % total % differs from its lines %', NEW.id, NEW.total_micros, lines_total
                USING ERRCODE = 'P0001';
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER invoices_immutable BEFORE UPDATE OR DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoice_guard();

CREATE FUNCTION invoice_line_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE st text;
BEGIN
    SELECT status INTO st FROM invoices
     WHERE id = (CASE WHEN TG_OP = 'INSERT' THEN NEW.invoice_id ELSE OLD.invoice_id END);
    IF st = 'finalized' THEN
        RAISE EXCEPTION 'lines of a finalized invoice are immutable' USING ERRCODE = 'P0001';
    END IF;
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER invoice_lines_immutable BEFORE INSERT OR UPDATE OR DELETE ON invoice_lines
    FOR EACH ROW EXECUTE FUNCTION invoice_line_guard();

-- The public catalogue's default plan (prices in micro-USD per billing unit).
INSERT INTO price_plans (id, tenant_id, name, currency, spec) VALUES (
    '00000000-0000-4000-8000-000000000001', NULL, 'standard', 'USD',
    '{"meters": [
        {"meter": "traffic_bytes", "unit": "GB", "unit_size": 1000000000,
         "tiers": [{"up_to": 1000, "unit_price_micros": 80000},
                   {"up_to": 10000, "unit_price_micros": 50000},
                   {"up_to": null, "unit_price_micros": 20000}]},
        {"meter": "mics_issued", "unit": "MIC", "unit_size": 1,
         "tiers": [{"up_to": 100, "unit_price_micros": 5000000},
                   {"up_to": 1000, "unit_price_micros": 3500000},
                   {"up_to": null, "unit_price_micros": 2000000}]},
        {"meter": "cluster_hours", "unit": "cluster-month", "unit_size": 730,
         "tiers": [{"up_to": null, "unit_price_micros": 200000000}]}
    ]}'::jsonb
);
