-- A conversation's last seq is the highest seq among its messages (read through the
-- (conversation_id, seq) index), so a message batch writes only the messages.
ALTER TABLE conversations DROP COLUMN last_seq;
