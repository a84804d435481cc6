DROP TRIGGER messages_enqueue ON app.messages;
DROP TABLE app.message_outbox;
DROP FUNCTION app.enqueue_message(), app.notify_outbox();
ALTER TABLE app.messages DROP CONSTRAINT messages_session_user_fkey,
    DROP COLUMN processed_at, DROP COLUMN processed_by;
ALTER TABLE app.chat_sessions DROP CONSTRAINT chat_sessions_user_key;
DROP POLICY messages_own_user ON app.messages;
DROP POLICY chat_sessions_own_user ON app.chat_sessions;
