-- Whether the guest has ever sent anything. Anonymous guests who never have are forgotten a
-- while after they arrived (GUEST_SILENT_VISITOR_TTL); guests from before this column are kept.
ALTER TABLE guests ADD COLUMN engaged BIGINT NOT NULL DEFAULT 1;
CREATE INDEX guests_silent ON guests (created_at_ms) WHERE engaged = 0;
