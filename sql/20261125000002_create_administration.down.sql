DROP FUNCTION app.begin_request(text, uuid);
CREATE FUNCTION app.begin_request(context_token text, member uuid)
RETURNS TABLE (role text, default_workspace_id uuid, slug text, name text,
               display_name text, configuration jsonb, workspace_roles jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.set_config('tenancy.token', context_token, true);
    RETURN QUERY
    SELECT m.role, m.default_workspace_id, t.slug, t.name, t.display_name, t.configuration,
           coalesce((SELECT jsonb_object_agg(w.workspace_id, w.role)
                     FROM app.workspace_members w WHERE w.user_id = member), '{}'::jsonb)
    FROM tenancy.current_tenant() t
    LEFT JOIN app.tenant_memberships m ON m.user_id = member;
END
$$;
DROP INDEX app.audit_events_time_idx;
DROP TABLE app.tenant_config_versions, app.email_outbox, app.email_templates, app.categories, app.tenant_roles;
DROP TRIGGER messages_storage ON app.messages;
DROP TRIGGER tasks_storage ON app.tasks;
DROP TRIGGER tenant_memberships_limit ON app.tenant_memberships;
DROP TRIGGER workspaces_limit ON app.workspaces;
DROP FUNCTION app.track_storage(), app.enforce_count_limit(), app.content_bytes(jsonb);
DROP TABLE app.tenant_usage;
DROP VIEW app.tenant_limits;
DROP TABLE app.tenant_plans, app.plans;
