-- One-time join tokens: how a node agent obtains its first node certificate (role `node`,
-- CN = node name), as `kubeadm join` does. Only the secret's SHA-256 is stored. The first Join
-- binds the token to the requester's node name and key; repeating exactly that Join (its
-- answer was lost) returns the same certificate, anything else is refused. Later
-- certificates come from renewal with the certificate the node holds, never from the token.
CREATE TABLE join_tokens (
    id               TEXT PRIMARY KEY,          -- the public half: 6 characters [a-z0-9]
    secret_sha256    BYTEA NOT NULL,
    node_name        TEXT,                       -- set: only this node may join with it
    description      TEXT NOT NULL DEFAULT '',
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at       TIMESTAMPTZ NOT NULL,
    used_at          TIMESTAMPTZ,
    used_by          TEXT,                       -- the node name it was used for
    used_spki_sha256 BYTEA,                      -- the key it was used for
    used_serial      TEXT REFERENCES service_certs (serial),
    CHECK ((used_at IS NULL) = (used_serial IS NULL)),
    CHECK ((used_at IS NULL) = (used_by IS NULL)),
    CHECK ((used_at IS NULL) = (used_spki_sha256 IS NULL))
);
