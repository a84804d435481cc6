-- Isolation edges reachable by the application role.
--
-- 1. The context is set with tenancy.set_token() (a bind parameter, never in
--    statement text, and loading the extension's library first).
-- 2. Credentials: the login functions and account creation belong to the
--    credential role (the owner, or DATABASE_AUTH_URL); the application role
--    may no longer call them (migrate also withholds app.users.password_hash).
-- 3. Plan limits serialise on a row of the tenant's own plan (visible only
--    inside that tenant's context), not on an advisory lock any role can take.

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

REVOKE EXECUTE ON FUNCTION app.login_lookup(text), app.user_tenants(uuid), app.ensure_user(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION app.enforce_count_limit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    limit_name text := TG_ARGV[0];
    allowed    bigint;
    used       bigint;
BEGIN
    EXECUTE format('SELECT %I FROM app.tenant_limits WHERE tenant_id = $1', limit_name)
        INTO allowed USING NEW.tenant_id;
    IF allowed IS NULL THEN
        RETURN NEW;
    END IF;
    -- Serialises this tenant's inserts so two can never both take the last
    -- slot. The row is the tenant's own: no other tenant's context sees it,
    -- and the application role may not lock it.
    PERFORM 1 FROM app.tenant_plans p WHERE p.tenant_id = NEW.tenant_id FOR NO KEY UPDATE;
    EXECUTE format('SELECT count(*) FROM %I.%I WHERE tenant_id = $1', TG_TABLE_SCHEMA, TG_TABLE_NAME)
        INTO used USING NEW.tenant_id;
    IF used >= allowed THEN
        RAISE EXCEPTION 'Limit reached: % (%)', limit_name, allowed
            USING ERRCODE = '53400', DETAIL = format('%s of %s in use', used, allowed);
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION app.check_single_tenant() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (SELECT single_tenant_users FROM app.settings) THEN
        -- Serialises memberships of one user; the application role may not
        -- lock rows of app.users.
        PERFORM 1 FROM app.users u WHERE u.id = NEW.user_id FOR NO KEY UPDATE;
        IF EXISTS (SELECT 1 FROM app.tenant_memberships m
                   WHERE m.user_id = NEW.user_id AND m.tenant_id <> NEW.tenant_id) THEN
            RAISE EXCEPTION 'user % already belongs to another tenant', NEW.user_id
                USING ERRCODE = '23505', HINT = 'This deployment allows one tenant per user.';
        END IF;
    END IF;
    RETURN NEW;
END
$$;
