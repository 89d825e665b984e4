CREATE TABLE attachments (
    attachment_id TEXT PRIMARY KEY,
    hotel_id      TEXT NOT NULL,
    guest_id      TEXT NOT NULL,
    filename      TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    size          BIGINT NOT NULL,
    status        TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX attachments_guest ON attachments (guest_id);
