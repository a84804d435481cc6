GRANT EXECUTE ON FUNCTION app.login_lookup(text), app.user_tenants(uuid), app.ensure_user(text) TO PUBLIC;

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
    PERFORM pg_advisory_xact_lock(hashtext('tenancy.limit.' || limit_name), hashtext(NEW.tenant_id::text));
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
        PERFORM pg_advisory_xact_lock(hashtext('app.tenant_memberships'), hashtext(NEW.user_id::text));
        IF EXISTS (SELECT 1 FROM app.tenant_memberships m
                   WHERE m.user_id = NEW.user_id AND m.tenant_id <> NEW.tenant_id) THEN
            RAISE EXCEPTION 'user % already belongs to another tenant', NEW.user_id
                USING ERRCODE = '23505', HINT = 'This deployment allows one tenant per user.';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

DROP FUNCTION app.begin_request(text, uuid);
CREATE FUNCTION app.begin_request(context_token text, member uuid)
RETURNS TABLE (role text, default_workspace_id uuid, slug text, name text,
               display_name text, configuration jsonb, workspace_roles jsonb,
               api_requests_per_minute integer)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.set_config('tenancy.token', context_token, true);
    RETURN QUERY
    SELECT m.role, m.default_workspace_id, t.slug, t.name, t.display_name, t.configuration,
           coalesce((SELECT jsonb_object_agg(w.workspace_id, w.role)
                     FROM app.workspace_members w WHERE w.user_id = member), '{}'::jsonb),
           (SELECT l.api_requests_per_minute FROM app.tenant_limits l)
    FROM tenancy.current_tenant() t
    LEFT JOIN app.tenant_memberships m ON m.user_id = member;
END
$$;
