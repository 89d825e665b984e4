CREATE TABLE guests (
    guest_id      TEXT PRIMARY KEY,
    hotel_id      TEXT NOT NULL,
    channel       TEXT NOT NULL,
    visitor_id    TEXT NOT NULL,
    name          TEXT,
    email         TEXT,
    verified      BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL,
    UNIQUE (hotel_id, channel, visitor_id)
);

CREATE TABLE hotels (
    hotel_id        TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    allowed_origins TEXT NOT NULL,
    identity_secret TEXT,
    updated_at_ms   BIGINT NOT NULL
);

CREATE TABLE service_secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
