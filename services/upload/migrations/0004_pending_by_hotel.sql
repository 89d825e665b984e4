-- What each hotel has waiting to be sent counts against its quota of pending bytes.
CREATE INDEX attachments_pending_hotel ON attachments (hotel_id) WHERE status = 'pending';
