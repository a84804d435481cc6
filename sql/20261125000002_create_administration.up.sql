-- Tenant administration: plans and per-tenant limits enforced in the
-- database, usage, provisioning defaults (roles, categories, email
-- templates), versioned configuration, the welcome-email outbox.

------------------------------------------------------------------------------
-- Plans and limits. NULL means unlimited. A tenant without a plan row has no
-- limits (tenants created before plans existed, and from the command line).
------------------------------------------------------------------------------

CREATE TABLE app.plans (
    name                    text    PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_-]{0,31}$'),
    max_members             integer CHECK (max_members >= 0),
    max_workspaces          integer CHECK (max_workspaces >= 0),
    storage_bytes           bigint  CHECK (storage_bytes >= 0),
    api_requests_per_minute integer CHECK (api_requests_per_minute > 0)
);
INSERT INTO app.plans VALUES
    ('free',        5,    3,    104857600,    120),
    ('pro',        50,   25,  10737418240,   1200),
    ('enterprise', NULL, NULL,        NULL,   NULL);

-- The tenant's plan and its overrides (NULL: the plan's value).
CREATE TABLE app.tenant_plans (
    tenant_id               uuid        NOT NULL PRIMARY KEY,
    plan                    text        NOT NULL REFERENCES app.plans (name),
    max_members             integer     CHECK (max_members >= 0),
    max_workspaces          integer     CHECK (max_workspaces >= 0),
    storage_bytes           bigint      CHECK (storage_bytes >= 0),
    api_requests_per_minute integer     CHECK (api_requests_per_minute > 0),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
SELECT tenancy.protect('app.tenant_plans');

CREATE VIEW app.tenant_limits WITH (security_invoker = true) AS
SELECT tp.tenant_id, tp.plan,
       coalesce(tp.max_members, p.max_members)                         AS max_members,
       coalesce(tp.max_workspaces, p.max_workspaces)                   AS max_workspaces,
       coalesce(tp.storage_bytes, p.storage_bytes)                     AS storage_bytes,
       coalesce(tp.api_requests_per_minute, p.api_requests_per_minute) AS api_requests_per_minute
FROM app.tenant_plans tp JOIN app.plans p ON p.name = tp.plan;

-- Bytes of user content (messages, tasks), kept by triggers.
CREATE TABLE app.tenant_usage (
    tenant_id     uuid   NOT NULL PRIMARY KEY,
    storage_bytes bigint NOT NULL DEFAULT 0
);
SELECT tenancy.protect('app.tenant_usage');

-- Refuses a row that would exceed the tenant's limit TG_ARGV[0], counting
-- rows of the same table. A per-tenant advisory lock serialises concurrent
-- inserts, so two requests can never both take the last free slot.
CREATE FUNCTION app.enforce_count_limit() RETURNS trigger
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
CREATE TRIGGER tenant_memberships_limit BEFORE INSERT ON app.tenant_memberships
    FOR EACH ROW EXECUTE FUNCTION app.enforce_count_limit('max_members');
CREATE TRIGGER workspaces_limit BEFORE INSERT ON app.workspaces
    FOR EACH ROW EXECUTE FUNCTION app.enforce_count_limit('max_workspaces');

CREATE FUNCTION app.content_bytes(r jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(octet_length(r->>'content'), 0)
         + coalesce(octet_length(r->>'title'), 0)
         + coalesce(octet_length(r->>'description'), 0);
$$;

-- Keeps app.tenant_usage.storage_bytes and refuses growth past the limit.
CREATE FUNCTION app.track_storage() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tenant  uuid;
    delta   bigint := 0;
    total   bigint;
    allowed bigint;
BEGIN
    -- Only what users write counts (content, title, description): a worker
    -- stamping a message processed changes nothing.
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        tenant := NEW.tenant_id;
        delta := app.content_bytes(to_jsonb(NEW));
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        tenant := OLD.tenant_id;
        delta := delta - app.content_bytes(to_jsonb(OLD));
    END IF;
    INSERT INTO app.tenant_usage AS u (tenant_id, storage_bytes) VALUES (tenant, greatest(delta, 0))
    ON CONFLICT (tenant_id) DO UPDATE SET storage_bytes = greatest(u.storage_bytes + delta, 0)
    RETURNING u.storage_bytes INTO total;
    IF delta > 0 THEN
        SELECT l.storage_bytes INTO allowed FROM app.tenant_limits l WHERE l.tenant_id = tenant;
        IF allowed IS NOT NULL AND total > allowed THEN
            RAISE EXCEPTION 'Limit reached: storage_bytes (%)', allowed
                USING ERRCODE = '53400', DETAIL = format('%s of %s bytes in use', total - delta, allowed);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER messages_storage AFTER INSERT OR UPDATE OR DELETE ON app.messages
    FOR EACH ROW EXECUTE FUNCTION app.track_storage();
CREATE TRIGGER tasks_storage AFTER INSERT OR UPDATE OR DELETE ON app.tasks
    FOR EACH ROW EXECUTE FUNCTION app.track_storage();

------------------------------------------------------------------------------
-- Provisioning defaults
------------------------------------------------------------------------------

-- The role set of the policies, with what each role may do (written from
-- the Cedar policies when the tenant is provisioned; the policies decide).
CREATE TABLE app.tenant_roles (
    tenant_id   uuid   NOT NULL,
    scope       text   NOT NULL CHECK (scope IN ('tenant', 'workspace')),
    role        text   NOT NULL,
    permissions text[] NOT NULL,
    PRIMARY KEY (tenant_id, scope, role)
);
SELECT tenancy.protect('app.tenant_roles');

CREATE TABLE app.categories (
    tenant_id  uuid    NOT NULL,
    id         uuid    NOT NULL DEFAULT gen_random_uuid(),
    name       text    NOT NULL CHECK (btrim(name) <> '' AND length(name) <= 100),
    position   integer NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name)
);
SELECT tenancy.protect('app.categories');

CREATE TABLE app.email_templates (
    tenant_id uuid NOT NULL,
    key       text NOT NULL CHECK (key ~ '^[a-z_]{1,50}$'),
    subject   text NOT NULL CHECK (length(subject) <= 300),
    body      text NOT NULL CHECK (length(body) <= 20000),
    PRIMARY KEY (tenant_id, key)
);
SELECT tenancy.protect('app.email_templates');

-- Mail to send; a sender delivers and stamps it. Kept until sent, so a mail
-- server being down loses nothing. Read across tenants by the sender (owner).
CREATE TABLE app.email_outbox (
    tenant_id  uuid        NOT NULL,
    id         bigint      GENERATED ALWAYS AS IDENTITY,
    recipient  text        NOT NULL CHECK (recipient ~ '^[^@\s]+@[^@\s]+$'),
    template   text        NOT NULL,
    subject    text        NOT NULL,
    body       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz,
    attempts   integer     NOT NULL DEFAULT 0,
    -- After a failure the next try waits longer (backoff up to an hour).
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX email_outbox_pending_idx ON app.email_outbox (next_attempt_at) WHERE sent_at IS NULL;
SELECT tenancy.protect('app.email_outbox');
ALTER TABLE app.email_outbox NO FORCE ROW LEVEL SECURITY;

------------------------------------------------------------------------------
-- Versioned configuration and branding
------------------------------------------------------------------------------

-- Every change to a tenant's configuration or branding, with the whole
-- document after it. The latest 'config' version is the configuration; the
-- branding itself lives in the tenant's catalog row.
CREATE TABLE app.tenant_config_versions (
    tenant_id     uuid        NOT NULL,
    version       integer     NOT NULL CHECK (version > 0),
    kind          text        NOT NULL CHECK (kind IN ('config', 'branding')),
    value         jsonb       NOT NULL,
    changes       jsonb       NOT NULL,
    changed_by    uuid,
    changed_at    timestamptz NOT NULL DEFAULT now(),
    restored_from integer,
    PRIMARY KEY (tenant_id, version)
);
SELECT tenancy.protect('app.tenant_config_versions');

-- The audit trail is read by time and action.
CREATE INDEX audit_events_time_idx ON app.audit_events (tenant_id, created_at);

-- begin_request also returns the tenant's API rate limit (NULL: none).
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
