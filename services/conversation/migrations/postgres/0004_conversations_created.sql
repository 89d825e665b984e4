-- Conversations that never got a message are forgotten a while after they were opened
-- (CONVERSATION_EMPTY_TTL): found by when they were opened.
CREATE INDEX conversations_created ON conversations (created_at_ms);
