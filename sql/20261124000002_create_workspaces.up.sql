-- Workspaces, their members, boards and tasks. Every key and foreign key
-- includes tenant_id, so nothing can point into another tenant.

CREATE TABLE app.workspaces (
    tenant_id   uuid        NOT NULL,
    id          uuid        NOT NULL DEFAULT gen_random_uuid(),
    name        text        NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    archived_at timestamptz,
    created_by  uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
SELECT tenancy.protect('app.workspaces');

ALTER TABLE app.tenant_memberships
    ADD CONSTRAINT tenant_memberships_default_workspace_fkey
    FOREIGN KEY (tenant_id, default_workspace_id) REFERENCES app.workspaces (tenant_id, id)
    ON DELETE SET NULL (default_workspace_id);

CREATE TABLE app.workspace_members (
    tenant_id    uuid        NOT NULL,
    workspace_id uuid        NOT NULL,
    user_id      uuid        NOT NULL,
    role         text        NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, workspace_id, user_id),
    FOREIGN KEY (tenant_id, workspace_id) REFERENCES app.workspaces (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, user_id) REFERENCES app.tenant_memberships (tenant_id, user_id) ON DELETE CASCADE
);
CREATE INDEX workspace_members_user_idx ON app.workspace_members (tenant_id, user_id);
SELECT tenancy.protect('app.workspace_members');

CREATE TABLE app.boards (
    tenant_id    uuid        NOT NULL,
    id           uuid        NOT NULL DEFAULT gen_random_uuid(),
    workspace_id uuid        NOT NULL,
    name         text        NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, workspace_id) REFERENCES app.workspaces (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX boards_workspace_idx ON app.boards (tenant_id, workspace_id);
SELECT tenancy.protect('app.boards');

CREATE TABLE app.tasks (
    tenant_id   uuid        NOT NULL,
    id          uuid        NOT NULL DEFAULT gen_random_uuid(),
    board_id    uuid        NOT NULL,
    title       text        NOT NULL CHECK (length(btrim(title)) BETWEEN 1 AND 500),
    description text        NOT NULL DEFAULT '' CHECK (length(description) <= 10000),
    status      text        NOT NULL DEFAULT 'todo' CHECK (status IN ('todo', 'doing', 'done')),
    assignee_id uuid,
    created_by  uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, board_id) REFERENCES app.boards (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, assignee_id) REFERENCES app.tenant_memberships (tenant_id, user_id)
);
CREATE INDEX tasks_board_idx ON app.tasks (tenant_id, board_id, created_at);
SELECT tenancy.protect('app.tasks');
