-- What waits to be sent is bounded per client address too, and an upload URL that expired
-- with nothing uploaded is forgotten soon after (`uploaded` is set once its file is seen;
-- attachments from before this column count as seen).
ALTER TABLE attachments ADD COLUMN client_address TEXT;
ALTER TABLE attachments ADD COLUMN uploaded BIGINT NOT NULL DEFAULT 1;
CREATE INDEX attachments_pending_address ON attachments (client_address) WHERE status = 'pending';
CREATE INDEX attachments_unseen ON attachments (created_at_ms) WHERE status = 'pending' AND uploaded = 0;
