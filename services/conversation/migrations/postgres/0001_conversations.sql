CREATE TABLE conversations (
    conversation_id TEXT PRIMARY KEY,
    hotel_id        TEXT NOT NULL,
    guest_id        TEXT NOT NULL,
    channel         TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'active',
    last_seq        BIGINT NOT NULL DEFAULT 0,
    guest_read_seq  BIGINT NOT NULL DEFAULT 0,
    butler_read_seq BIGINT NOT NULL DEFAULT 0,
    created_at_ms   BIGINT NOT NULL
);
-- One active conversation per guest and channel.
CREATE UNIQUE INDEX conversations_active ON conversations (guest_id, channel) WHERE status = 'active';

-- `position` orders every message of every conversation in commit order: the cursor of
-- WatchMessages.
CREATE TABLE messages (
    position            BIGSERIAL PRIMARY KEY,
    message_id          TEXT NOT NULL UNIQUE,
    conversation_id     TEXT NOT NULL REFERENCES conversations (conversation_id),
    seq                 BIGINT NOT NULL,
    role                BIGINT NOT NULL,
    kind                BIGINT NOT NULL,
    content             TEXT NOT NULL,
    client_message_id   TEXT,
    payload             TEXT,
    reply_to_message_id TEXT,
    rich                BYTEA,
    hotel_id            TEXT NOT NULL,
    guest_id            TEXT NOT NULL,
    created_at_ms       BIGINT NOT NULL,
    UNIQUE (conversation_id, seq),
    UNIQUE (conversation_id, client_message_id)
);

-- Events to hand to delivery, written in the same transaction as what they announce.
CREATE TABLE outbox (
    position BIGSERIAL PRIMARY KEY,
    event    BYTEA NOT NULL
);
