-- tenancy: the catalog. Runs first at CREATE EXTENSION, before any function.
--
-- Privileges: nothing here is granted to PUBLIC. The application role reaches
-- the catalog only through the functions in api.sql; the signing keys are
-- readable by the extension owner alone.

DO $roles$
BEGIN
    -- Members may call tenancy.bypass() and manage tenants and keys.
    -- Roles are cluster-wide: another database may have created it already,
    -- possibly at this very moment.
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'tenancy_admin') THEN
        BEGIN
            CREATE ROLE tenancy_admin NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$roles$;

-- Functions live in this schema and every policy calls them, so every role
-- needs to see it; the tables below stay closed.
GRANT USAGE ON SCHEMA tenancy TO PUBLIC;

CREATE TABLE tenancy.tenants (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    -- A DNS label, so that every slug is also a valid subdomain.
    slug          text        NOT NULL
                  CONSTRAINT tenants_slug_key UNIQUE
                  CONSTRAINT tenants_slug_url_safe
                  CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    name          text        NOT NULL CONSTRAINT tenants_name_not_blank CHECK (btrim(name) <> ''),
    display_name  text        NOT NULL CONSTRAINT tenants_display_name_not_blank CHECK (btrim(display_name) <> ''),
    logo_url      text,
    primary_color text        CONSTRAINT tenants_primary_color_hex CHECK (primary_color ~ '^#[0-9A-Fa-f]{6}$'),
    configuration jsonb       NOT NULL DEFAULT '{}'
                  CONSTRAINT tenants_configuration_object CHECK (jsonb_typeof(configuration) = 'object'),
    status        text        NOT NULL DEFAULT 'active'
                  CONSTRAINT tenants_status_known CHECK (status IN ('active', 'suspended', 'inactive')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE tenancy.tenants IS 'The tenant catalog. Deleting a tenant is a status change (inactive); rows are kept.';

CREATE TABLE tenancy.domains (
    domain     text        PRIMARY KEY
               CONSTRAINT domains_domain_valid
               CHECK (domain ~ '^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$'
                      AND length(domain) <= 253),
    tenant_id  uuid        NOT NULL REFERENCES tenancy.tenants (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX domains_tenant_id_idx ON tenancy.domains (tenant_id);
COMMENT ON TABLE tenancy.domains IS 'Custom domains mapped to tenants (lower case, no port).';

CREATE TABLE tenancy.settings (
    name  text PRIMARY KEY
          CONSTRAINT settings_name_known CHECK (name IN (
              'base_domain', 'jwt_audience', 'jwt_issuer', 'jwt_leeway_seconds',
              'tenant_claim', 'user_claim')),
    value text NOT NULL
);
COMMENT ON TABLE tenancy.settings IS 'Deployment settings; change them with tenancy.set_setting().';

CREATE TABLE tenancy.keys (
    kid          text        PRIMARY KEY CONSTRAINT keys_kid_format CHECK (kid ~ '^[A-Za-z0-9._:-]{1,128}$'),
    algorithm    text        NOT NULL,
    key_material text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    retired_at   timestamptz
);
COMMENT ON TABLE tenancy.keys IS 'Keys that verify tenancy.token, by kid. Readable by the extension owner only.';

CREATE TABLE tenancy.audit_log (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    session_role name        NOT NULL,
    acting_role  name        NOT NULL,
    action       text        NOT NULL,
    tenant_id    uuid,
    reason       text,
    details      jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_occurred_at_idx ON tenancy.audit_log (occurred_at);
COMMENT ON TABLE tenancy.audit_log IS 'Bypasses and catalog changes: who, when, why.';

REVOKE ALL ON tenancy.tenants, tenancy.domains, tenancy.settings, tenancy.keys, tenancy.audit_log FROM PUBLIC;
GRANT SELECT ON tenancy.tenants, tenancy.domains, tenancy.settings, tenancy.audit_log TO tenancy_admin;
