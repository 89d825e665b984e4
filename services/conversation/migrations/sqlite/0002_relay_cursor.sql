-- The message table is its own outbox: the relay remembers how far it has published.
-- (The outbox table keeps the other durable events, such as read receipts.)
CREATE TABLE relay_cursor (
    name     TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);
