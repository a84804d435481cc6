-- Identities, tenant memberships, deployment settings and the audit trail.
-- Runs as the owner role (member of tenancy_admin, REFERENCES on tenancy.tenants).

CREATE SCHEMA app;

-- Global identities: one row per person, whatever tenants they belong to.
CREATE TABLE app.users (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    email          text        NOT NULL CHECK (email ~ '^[^@\s]+@[^@\s]+$' AND length(email) <= 254),
    password_hash  text        NOT NULL,
    display_name   text        NOT NULL DEFAULT '',
    is_super_admin boolean     NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON app.users (lower(email));

CREATE TABLE app.tenant_memberships (
    tenant_id            uuid        NOT NULL,
    user_id              uuid        NOT NULL REFERENCES app.users (id) ON DELETE CASCADE,
    role                 text        NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    default_workspace_id uuid,
    created_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX tenant_memberships_user_idx ON app.tenant_memberships (user_id);
SELECT tenancy.protect('app.tenant_memberships');
-- The one exception to FORCE: the owner's login functions below read a
-- user's memberships across tenants. The application role stays isolated.
ALTER TABLE app.tenant_memberships NO FORCE ROW LEVEL SECURITY;

-- The application role sees itself and the users of the current tenant.
ALTER TABLE app.users ENABLE ROW LEVEL SECURITY;
CREATE POLICY users_visible ON app.users FOR SELECT USING (
    id = (SELECT tenancy.current_user_id())
    OR EXISTS (SELECT 1 FROM app.tenant_memberships m WHERE m.user_id = users.id)
);

CREATE TABLE app.settings (
    single_tenant_users boolean NOT NULL DEFAULT false,
    only_row            boolean PRIMARY KEY DEFAULT true CHECK (only_row)
);
INSERT INTO app.settings DEFAULT VALUES;

-- With single_tenant_users, a user belongs to exactly one tenant.
CREATE FUNCTION app.check_single_tenant() RETURNS trigger
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
CREATE TRIGGER tenant_memberships_single_tenant BEFORE INSERT OR UPDATE OF user_id, tenant_id
    ON app.tenant_memberships FOR EACH ROW EXECUTE FUNCTION app.check_single_tenant();

-- A user's tenants with their role and the tenant's status. Runs as the owner.
CREATE FUNCTION app.user_tenants(member uuid)
RETURNS TABLE (tenant_id uuid, slug text, name text, role text, status text, default_workspace_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.tenant_id, t.slug, t.name, m.role, t.status, m.default_workspace_id
    FROM app.tenant_memberships m JOIN tenancy.tenants t ON t.id = m.tenant_id
    WHERE m.user_id = member;
$$;

-- Login data by email: id, hash and memberships. Runs as the owner.
CREATE FUNCTION app.login_lookup(login_email text)
RETURNS TABLE (user_id uuid, email text, password_hash text, is_super_admin boolean, tenants jsonb)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT u.id, u.email, u.password_hash, u.is_super_admin,
           coalesce((SELECT jsonb_agg(jsonb_build_object(
                        'id', t.tenant_id, 'slug', t.slug, 'name', t.name,
                        'role', t.role, 'status', t.status,
                        'default_workspace_id', t.default_workspace_id) ORDER BY t.slug)
                     FROM app.user_tenants(u.id) t), '[]'::jsonb)
    FROM app.users u WHERE lower(u.email) = lower(login_email);
$$;

CREATE TABLE app.audit_events (
    tenant_id  uuid        NOT NULL,
    id         bigint      GENERATED ALWAYS AS IDENTITY,
    actor_id   uuid,
    action     text        NOT NULL,
    target     text,
    details    jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
SELECT tenancy.protect('app.audit_events');

-- The first statement of every tenant-scoped request: sets the signed
-- context for the transaction, then returns the caller's membership (NULL
-- role: not a member) and the tenant's own row, both read through that
-- context. No SET clause on purpose: it would undo set_config(..., true)
-- when the function returns.
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

-- The id of the user with this email, created as an invited user (no usable
-- password) when new. Returns nothing else about the user.
CREATE FUNCTION app.ensure_user(user_email text) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found uuid;
BEGIN
    SELECT u.id INTO found FROM app.users u WHERE lower(u.email) = lower(btrim(user_email));
    IF found IS NULL THEN
        INSERT INTO app.users (email, password_hash) VALUES (btrim(user_email), '!invited')
        ON CONFLICT (lower(email)) DO UPDATE SET email = app.users.email
        RETURNING id INTO found;
    END IF;
    RETURN found;
END
$$;
