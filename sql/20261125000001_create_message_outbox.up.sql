-- Messaging: per-user isolation of chat in the database, and the outbox that
-- carries each message to the tenant's Redis Stream `messages:{tenant_id}`.

-- A user sees and writes only their own sessions and messages, on top of the
-- tenant policy (restrictive policies AND with it). A bypassing tenancy_admin
-- is exempt, as it is from the tenant policy.
CREATE POLICY chat_sessions_own_user ON app.chat_sessions AS RESTRICTIVE FOR ALL
    USING ((SELECT tenancy.bypass_active()) OR user_id = (SELECT tenancy.current_user_id()))
    WITH CHECK ((SELECT tenancy.bypass_active()) OR user_id = (SELECT tenancy.current_user_id()));
CREATE POLICY messages_own_user ON app.messages AS RESTRICTIVE FOR ALL
    USING ((SELECT tenancy.bypass_active()) OR user_id = (SELECT tenancy.current_user_id()))
    WITH CHECK ((SELECT tenancy.bypass_active()) OR user_id = (SELECT tenancy.current_user_id()));

-- A message belongs to the session's user: the pair is a foreign key.
ALTER TABLE app.chat_sessions ADD CONSTRAINT chat_sessions_user_key UNIQUE (tenant_id, id, user_id);
ALTER TABLE app.messages ADD CONSTRAINT messages_session_user_fkey
    FOREIGN KEY (tenant_id, session_id, user_id) REFERENCES app.chat_sessions (tenant_id, id, user_id)
    ON DELETE CASCADE;

-- What a worker did with the message (at-least-once delivery: the first
-- processing wins, a duplicate changes nothing).
ALTER TABLE app.messages
    ADD COLUMN processed_at timestamptz,
    ADD COLUMN processed_by text CHECK (length(processed_by) <= 200);

-- One row per message, written by a trigger in the sender's transaction (so
-- no writer of app.messages can forget it, and the application role cannot
-- write or alter outbox rows itself). The relay publishes each row and
-- stamps published_at and the stream entry id.
CREATE TABLE app.message_outbox (
    tenant_id          uuid        NOT NULL,
    id                 bigint      GENERATED ALWAYS AS IDENTITY,
    message_id         uuid        NOT NULL,
    session_id         uuid        NOT NULL,
    user_id            uuid        NOT NULL,
    content            text        NOT NULL,
    message_created_at timestamptz NOT NULL,
    published_at       timestamptz,
    stream_id          text,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, message_id),
    FOREIGN KEY (tenant_id, message_id) REFERENCES app.messages (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX message_outbox_pending_idx ON app.message_outbox (id) WHERE published_at IS NULL;
SELECT tenancy.protect('app.message_outbox');
CREATE POLICY message_outbox_own_user ON app.message_outbox AS RESTRICTIVE FOR ALL
    USING ((SELECT tenancy.bypass_active()) OR user_id = (SELECT tenancy.current_user_id()))
    WITH CHECK ((SELECT tenancy.bypass_active()) OR user_id = (SELECT tenancy.current_user_id()));
-- The relay reads every tenant's pending rows as the owner role (like the
-- login functions read memberships). The application role stays isolated.
ALTER TABLE app.message_outbox NO FORCE ROW LEVEL SECURITY;

-- Copies each new message into the outbox. Runs as the owner; NEW has
-- already passed the tenant and user policies of app.messages.
CREATE FUNCTION app.enqueue_message() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO app.message_outbox (tenant_id, message_id, session_id, user_id, content, message_created_at)
    VALUES (NEW.tenant_id, NEW.id, NEW.session_id, NEW.user_id, NEW.content, NEW.created_at);
    RETURN NULL;
END
$$;
CREATE TRIGGER messages_enqueue AFTER INSERT ON app.messages
    FOR EACH ROW EXECUTE FUNCTION app.enqueue_message();

-- Wakes the relay at commit. The payload is empty on purpose: any role may
-- LISTEN on any channel, so it must not name a tenant.
CREATE FUNCTION app.notify_outbox() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('tenancy_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER message_outbox_notify AFTER INSERT ON app.message_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION app.notify_outbox();
