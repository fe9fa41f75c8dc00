-- Usage spool (transactional outbox): one row per issued MIC, written in the transaction that
-- logs the certificate, so an issued MIC is never missing from it; the usage reporter sends
-- each as a `mics_issued` event (idempotency key `mic:<serial>`) to the cloud API and marks it
-- sent. Rows survive restarts and outages of either side.
CREATE TABLE usage_outbox (
    serial          TEXT PRIMARY KEY REFERENCES certificates (serial),
    tenant          TEXT NOT NULL,
    issued_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT,
    sent_at         TIMESTAMPTZ
);
CREATE INDEX usage_outbox_pending ON usage_outbox (next_attempt_at) WHERE sent_at IS NULL;
