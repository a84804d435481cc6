DROP FUNCTION app.begin_request(text, uuid);
CREATE FUNCTION app.begin_request(context_token text, member uuid)
RETURNS TABLE (role text, default_workspace_id uuid, slug text, name text,
               display_name text, configuration jsonb, workspace_roles jsonb,
               api_requests_per_minute integer)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tenancy.set_token(context_token);
    RETURN QUERY
    SELECT m.role, m.default_workspace_id, t.slug, t.name, t.display_name, t.configuration,
           coalesce((SELECT jsonb_object_agg(w.workspace_id, w.role)
                     FROM app.workspace_members w WHERE w.user_id = member), '{}'::jsonb),
           (SELECT l.api_requests_per_minute FROM app.tenant_limits l)
    FROM tenancy.current_tenant() t
    LEFT JOIN app.tenant_memberships m ON m.user_id = member;
END
$$;

DROP VIEW app.tenant_limits;
CREATE VIEW app.tenant_limits WITH (security_invoker = true) AS
SELECT tp.tenant_id, tp.plan,
       coalesce(tp.max_members, p.max_members)                         AS max_members,
       coalesce(tp.max_workspaces, p.max_workspaces)                   AS max_workspaces,
       coalesce(tp.storage_bytes, p.storage_bytes)                     AS storage_bytes,
       coalesce(tp.api_requests_per_minute, p.api_requests_per_minute) AS api_requests_per_minute
FROM app.tenant_plans tp JOIN app.plans p ON p.name = tp.plan;
ALTER TABLE app.tenant_plans DROP COLUMN concurrent_requests;
ALTER TABLE app.plans DROP COLUMN concurrent_requests;
