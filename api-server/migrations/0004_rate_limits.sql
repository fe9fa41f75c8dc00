-- Per-key rate limits shared by every replica (issue 13): one GCRA row per API key, holding the
-- key's theoretical arrival time (TAT) in microseconds since the Unix epoch, taken from the
-- database's clock so replicas with skewed clocks still agree. UNLOGGED: losing this state in a
-- crash only refills every bucket (in the callers' favour), and skipping WAL keeps the one UPSERT
-- per request cheap. See nexus_cloud::ratelimit.
CREATE UNLOGGED TABLE rate_limits (
    key_id  uuid PRIMARY KEY,
    tat_us  bigint NOT NULL
);
