ALTER TABLE app.tenant_memberships DROP CONSTRAINT tenant_memberships_default_workspace_fkey;
DROP TABLE app.tasks, app.boards, app.workspace_members, app.workspaces;
