ALTER TABLE attachments ADD COLUMN conversation_id TEXT;
ALTER TABLE attachments ADD COLUMN has_thumbnail BIGINT NOT NULL DEFAULT 0;
CREATE INDEX attachments_conversation ON attachments (conversation_id);
