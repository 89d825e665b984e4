-- Visitor tokens name a guest record and its token epoch: moving the epoch on revokes every
-- token issued before.
ALTER TABLE guests ADD COLUMN token_epoch BIGINT NOT NULL DEFAULT 0;
