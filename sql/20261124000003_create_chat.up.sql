-- Chat sessions and messages, each owned by one user in one tenant.

CREATE TABLE app.chat_sessions (
    tenant_id  uuid        NOT NULL,
    id         uuid        NOT NULL DEFAULT gen_random_uuid(),
    user_id    uuid        NOT NULL,
    title      text        NOT NULL DEFAULT '' CHECK (length(title) <= 200),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES app.tenant_memberships (tenant_id, user_id) ON DELETE CASCADE
);
CREATE INDEX chat_sessions_user_idx ON app.chat_sessions (tenant_id, user_id);
SELECT tenancy.protect('app.chat_sessions');

CREATE TABLE app.messages (
    tenant_id  uuid        NOT NULL,
    id         uuid        NOT NULL DEFAULT gen_random_uuid(),
    session_id uuid        NOT NULL,
    user_id    uuid        NOT NULL,
    content    text        NOT NULL CHECK (length(content) BETWEEN 1 AND 4000),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, session_id) REFERENCES app.chat_sessions (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX messages_session_idx ON app.messages (tenant_id, session_id, created_at);
SELECT tenancy.protect('app.messages');
