-- tenancy: the SQL API. Runs last at CREATE EXTENSION, after the Rust
-- functions (current_tenant_id, bypass_active, check_key, write_audit,
-- invalidate_cache) exist.
--
-- Management functions run with the caller's rights: tenancy_admin holds the
-- column privileges they need (never the key material), and every change to
-- the catalog is audited by a trigger, whoever makes it and however.

------------------------------------------------------------------------------
-- Catalog triggers: audit every change, drop per-backend caches.
------------------------------------------------------------------------------

-- `doc` with secrets replaced by '****', at any depth: the value of every
-- key that names one (password, passwd, secret, token, credential, api key,
-- access key, private key, signing key, connection string anywhere in the
-- name; pw, pwd, key, auth, dsn as a word of it), and the password of any
-- URL (scheme://user:password@host). What the audit log keeps of a
-- tenant's configuration.
CREATE FUNCTION tenancy.mask_secrets(doc jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE jsonb_typeof(doc)
        WHEN 'object' THEN coalesce((
            SELECT jsonb_object_agg(e.key, CASE
                WHEN (e.key ~* '(pass(word|wd|phrase)|secret|token|credential|api_?-?key|access_?-?key|private_?-?key|signing_?-?key|connection_?-?string)'
                      OR e.key ~* '(^|[_.-])(pw|pwd|key|auth|dsn)([_.-]|$)'
                      OR e.key ~ '[a-z](Pw|Pwd|Key|Auth|Dsn)([A-Z_.-]|$)')
                     AND jsonb_typeof(e.value) <> 'null'
                THEN to_jsonb('****'::text)
                ELSE tenancy.mask_secrets(e.value) END)
            FROM jsonb_each(doc) e), '{}'::jsonb)
        WHEN 'array' THEN coalesce((
            SELECT jsonb_agg(tenancy.mask_secrets(a.value) ORDER BY a.n)
            FROM jsonb_array_elements(doc) WITH ORDINALITY a(value, n)), '[]'::jsonb)
        WHEN 'string' THEN to_jsonb(regexp_replace(doc #>> '{}',
            '^([a-zA-Z][a-zA-Z0-9+.-]*://[^/:@]*):[^/@]*@', '\1:****@'))
        ELSE doc
    END
$$;

CREATE FUNCTION tenancy.on_catalog_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    subject jsonb;
    tenant  uuid;
BEGIN
    -- Never a key, and never a secret put in a tenant's configuration.
    subject := tenancy.mask_secrets(to_jsonb(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END) - 'key_material');
    tenant := CASE TG_TABLE_NAME
                  WHEN 'tenants' THEN (subject ->> 'id')::uuid
                  WHEN 'domains' THEN (subject ->> 'tenant_id')::uuid
              END;
    PERFORM tenancy.write_audit(TG_TABLE_NAME || '.' || lower(TG_OP), tenant, NULL, subject);
    PERFORM tenancy.invalidate_cache(TG_RELID);
    RETURN NULL;
END
$$;

CREATE FUNCTION tenancy.on_catalog_truncate() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM tenancy.write_audit(TG_TABLE_NAME || '.truncate', NULL, NULL, '{}');
    PERFORM tenancy.invalidate_cache(TG_RELID);
    RETURN NULL;
END
$$;

-- A key is checked when it is stored, whoever stores it, so that a bad key
-- is refused at once rather than failing every later verification.
CREATE FUNCTION tenancy.on_key_write() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM tenancy.check_key(NEW.algorithm, NEW.key_material);
    RETURN NEW;
END
$$;

CREATE TRIGGER keys_check BEFORE INSERT OR UPDATE OF algorithm, key_material ON tenancy.keys
    FOR EACH ROW EXECUTE FUNCTION tenancy.on_key_write();

CREATE FUNCTION tenancy.touch_updated_at() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER tenants_touch BEFORE UPDATE ON tenancy.tenants
    FOR EACH ROW EXECUTE FUNCTION tenancy.touch_updated_at();

DO $triggers$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenants', 'domains', 'settings', 'keys'] LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON tenancy.%I
                        FOR EACH ROW EXECUTE FUNCTION tenancy.on_catalog_change()', t || '_audit', t);
        EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON tenancy.%I
                        FOR EACH STATEMENT EXECUTE FUNCTION tenancy.on_catalog_truncate()', t || '_truncate', t);
    END LOOP;
END
$triggers$;

------------------------------------------------------------------------------
-- Tenants
------------------------------------------------------------------------------

CREATE FUNCTION tenancy.check_slug(slug text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF slug IS NULL OR slug = '' THEN
        RAISE EXCEPTION 'tenant slug must not be empty' USING ERRCODE = '22023';
    END IF;
    IF slug !~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$' THEN
        RAISE EXCEPTION 'tenant slug "%" is not URL-safe', slug
            USING ERRCODE = '22023',
                  HINT = 'Use 1 to 63 lower-case letters, digits and hyphens, not starting or ending with a hyphen.';
    END IF;
END
$$;

CREATE FUNCTION tenancy.create_tenant(
    slug          text,
    name          text,
    display_name  text  DEFAULT NULL,
    configuration jsonb DEFAULT '{}',
    logo_url      text  DEFAULT NULL,
    primary_color text  DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id uuid;
BEGIN
    PERFORM tenancy.check_slug(slug);
    IF name IS NULL OR btrim(name) = '' THEN
        RAISE EXCEPTION 'tenant name must not be empty' USING ERRCODE = '22023';
    END IF;
    IF configuration IS NULL OR jsonb_typeof(configuration) <> 'object' THEN
        RAISE EXCEPTION 'tenant configuration must be a JSON object' USING ERRCODE = '22023';
    END IF;
    IF primary_color IS NOT NULL AND primary_color !~ '^#[0-9A-Fa-f]{6}$' THEN
        RAISE EXCEPTION 'primary_color "%" is not a colour of the form #RRGGBB', primary_color
            USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM tenancy.tenants t WHERE t.slug = create_tenant.slug) THEN
        RAISE EXCEPTION 'a tenant with slug "%" already exists', slug USING ERRCODE = '23505';
    END IF;
    INSERT INTO tenancy.tenants (slug, name, display_name, configuration, logo_url, primary_color)
    VALUES (slug, btrim(name), coalesce(nullif(btrim(display_name), ''), btrim(name)),
            configuration, logo_url, primary_color)
    RETURNING id INTO new_id;
    RETURN new_id;
EXCEPTION
    -- A concurrent create of the same slug loses here, with the same message.
    WHEN unique_violation THEN
        RAISE EXCEPTION 'a tenant with slug "%" already exists', slug USING ERRCODE = '23505';
END
$$;

CREATE FUNCTION tenancy.set_tenant_status(tenant uuid, status text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF status IS NULL OR status NOT IN ('active', 'suspended', 'inactive') THEN
        RAISE EXCEPTION 'unknown tenant status "%"', status
            USING ERRCODE = '22023', HINT = 'Use active, suspended or inactive.';
    END IF;
    UPDATE tenancy.tenants t SET status = set_tenant_status.status WHERE t.id = tenant;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % does not exist', tenant USING ERRCODE = 'P0002';
    END IF;
END
$$;

-- Removes a tenant for good: its rows in every protected table, its
-- domains, its catalog row. Refused while the tenant is active (suspend or
-- deactivate it first, so nothing writes meanwhile). Runs with the caller's
-- rights under tenancy.bypass (audited): the caller needs DELETE on the
-- protected tables. Tables are emptied in whatever order their foreign keys
-- allow; rows still referenced from outside the protected tables stop it,
-- and nothing is removed. Returns the number of rows it deleted (rows that
-- go by ON DELETE CASCADE are not counted).
CREATE FUNCTION tenancy.drop_tenant(tenant uuid) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    current_status text;
    tables         regclass[];
    failed         regclass[];
    t              regclass;
    col            name;
    deleted        bigint := 0;
    pass_deleted   bigint;
    n              bigint;
BEGIN
    SELECT x.status INTO current_status FROM tenancy.tenants x WHERE x.id = tenant FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % does not exist', tenant USING ERRCODE = 'P0002';
    END IF;
    IF current_status = 'active' THEN
        RAISE EXCEPTION 'tenant % is active', tenant
            USING ERRCODE = '55000', HINT = 'Suspend or deactivate it (tenancy.set_tenant_status) before dropping it.';
    END IF;
    PERFORM tenancy.bypass(format('drop tenant %s', tenant));
    -- Partitions and children go with their parents.
    SELECT coalesce(array_agg(p.table_name), '{}') INTO tables
    FROM tenancy.protected_tables p WHERE p.parent_table IS NULL;
    -- Passes over every table until one deletes nothing: a table whose rows
    -- are still referenced waits for the next pass, and rows that triggers
    -- write while others are deleted go in a later one.
    LOOP
        pass_deleted := 0;
        failed := '{}';
        FOREACH t IN ARRAY tables LOOP
            SELECT p.tenant_column INTO col FROM tenancy.protected_tables p WHERE p.table_name = t;
            BEGIN
                EXECUTE format('DELETE FROM %s WHERE %I = $1', t, col) USING tenant;
                GET DIAGNOSTICS n = ROW_COUNT;
                pass_deleted := pass_deleted + n;
            EXCEPTION WHEN foreign_key_violation THEN
                failed := failed || t;
            END;
        END LOOP;
        deleted := deleted + pass_deleted;
        EXIT WHEN pass_deleted = 0;
    END LOOP;
    IF cardinality(failed) > 0 THEN
        RAISE EXCEPTION 'rows of tenant % are still referenced from outside the protected tables', tenant
            USING ERRCODE = '23503', DETAIL = format('Tables not emptied: %s.', array_to_string(failed, ', '));
    END IF;
    DELETE FROM tenancy.domains d WHERE d.tenant_id = tenant;
    DELETE FROM tenancy.tenants x WHERE x.id = tenant;
    RETURN deleted;
END
$$;

CREATE FUNCTION tenancy.normalize_host(host text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    h text := lower(btrim(coalesce(host, '')));
BEGIN
    h := regexp_replace(h, ':[0-9]{1,5}$', '');   -- port
    h := regexp_replace(h, '\.$', '');              -- trailing dot of an FQDN
    IF h = '' OR length(h) > 253
       OR h !~ '^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$' THEN
        RAISE EXCEPTION 'invalid host name "%"', left(host, 300) USING ERRCODE = '22023';
    END IF;
    RETURN h;
END
$$;

CREATE FUNCTION tenancy.add_domain(tenant uuid, domain text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d text := tenancy.normalize_host(domain);
BEGIN
    IF position('.' IN d) = 0 THEN
        RAISE EXCEPTION 'custom domain "%" must be a fully qualified name', domain USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM tenancy.tenants t WHERE t.id = tenant) THEN
        RAISE EXCEPTION 'tenant % does not exist', tenant USING ERRCODE = 'P0002';
    END IF;
    INSERT INTO tenancy.domains (domain, tenant_id) VALUES (d, tenant);
EXCEPTION
    WHEN unique_violation THEN
        RAISE EXCEPTION 'domain "%" is already mapped to a tenant', d USING ERRCODE = '23505';
END
$$;

CREATE FUNCTION tenancy.remove_domain(domain text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM tenancy.domains d WHERE d.domain = tenancy.normalize_host(remove_domain.domain);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'domain "%" is not mapped', domain USING ERRCODE = 'P0002';
    END IF;
END
$$;

-- The service calls this before any tenant context exists, so it runs with
-- the owner's rights and returns only what routing needs.
CREATE FUNCTION tenancy.resolve_tenant(host text)
RETURNS TABLE (tenant_id uuid, slug text, status text, matched_by text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    h    text := tenancy.normalize_host(host);
    base text;
    sub  text;
BEGIN
    SELECT s.value INTO base FROM tenancy.settings s WHERE s.name = 'base_domain';
    IF base IS NOT NULL AND right(h, length(base) + 1) = '.' || base THEN
        sub := left(h, length(h) - length(base) - 1);
        IF position('.' IN sub) = 0 THEN
            RETURN QUERY SELECT t.id, t.slug, t.status, 'subdomain'::text
                         FROM tenancy.tenants t WHERE t.slug = sub;
            RETURN;
        END IF;
    END IF;
    RETURN QUERY SELECT t.id, t.slug, t.status, 'custom_domain'::text
                 FROM tenancy.domains d JOIN tenancy.tenants t ON t.id = d.tenant_id
                 WHERE d.domain = h;
END
$$;

-- Routing by id (an X-Tenant-ID header, a token claim), before any context.
CREATE FUNCTION tenancy.lookup_tenant(tenant uuid)
RETURNS TABLE (tenant_id uuid, slug text, status text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY SELECT t.id, t.slug, t.status FROM tenancy.tenants t WHERE t.id = tenant;
END
$$;

-- The current tenant's own catalog row (name, branding, configuration):
-- every tenant may read itself and nothing else. PL/pgSQL rather than SQL:
-- a SECURITY DEFINER SQL function is never inlined, so its body would be
-- parsed and planned again on every call; PL/pgSQL keeps the plan for the
-- session (34 us against 13 us a call, measured).
CREATE FUNCTION tenancy.current_tenant()
RETURNS TABLE (id uuid, slug text, name text, display_name text, logo_url text,
               primary_color text, configuration jsonb, status text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
    SELECT t.id, t.slug, t.name, t.display_name, t.logo_url, t.primary_color, t.configuration, t.status
    FROM tenancy.tenants t WHERE t.id = tenancy.current_tenant_id();
END
$$;

-- The current tenant replaces its own configuration (a JSON object). The
-- caller's right to do so is the application's decision; the database
-- guarantees that only the tenant of the context is touched.
CREATE FUNCTION tenancy.set_current_tenant_configuration(configuration jsonb)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tenant uuid := tenancy.current_tenant_id();
    result jsonb;
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'tenant context required' USING ERRCODE = '42501';
    END IF;
    IF configuration IS NULL OR jsonb_typeof(configuration) <> 'object' THEN
        RAISE EXCEPTION 'tenant configuration must be a JSON object' USING ERRCODE = '22023';
    END IF;
    UPDATE tenancy.tenants t SET configuration = set_current_tenant_configuration.configuration
    WHERE t.id = tenant RETURNING t.configuration INTO result;
    RETURN result;
END
$$;

-- The current tenant changes its own branding (display name, logo URL,
-- colour); NULL keeps a field as it is, '' clears the logo or colour. As
-- above, only the tenant of the context is touched.
CREATE FUNCTION tenancy.set_current_tenant_branding(
    display_name  text DEFAULT NULL,
    logo_url      text DEFAULT NULL,
    primary_color text DEFAULT NULL
) RETURNS TABLE (out_display_name text, out_logo_url text, out_primary_color text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tenant uuid := tenancy.current_tenant_id();
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'tenant context required' USING ERRCODE = '42501';
    END IF;
    IF display_name IS NOT NULL AND (btrim(display_name) = '' OR length(display_name) > 200) THEN
        RAISE EXCEPTION 'display_name must be 1 to 200 characters' USING ERRCODE = '22023';
    END IF;
    IF logo_url IS NOT NULL AND logo_url <> ''
       AND (logo_url !~ '^https?://[^\s/$.?#].[^\s]*$' OR length(logo_url) > 2048) THEN
        RAISE EXCEPTION 'logo_url must be an http(s) URL of at most 2048 characters' USING ERRCODE = '22023';
    END IF;
    IF primary_color IS NOT NULL AND primary_color <> '' AND primary_color !~ '^#[0-9A-Fa-f]{6}$' THEN
        RAISE EXCEPTION 'primary_color "%" is not a colour of the form #RRGGBB', primary_color
            USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    UPDATE tenancy.tenants t SET
        display_name  = coalesce(btrim(set_current_tenant_branding.display_name), t.display_name),
        logo_url      = CASE WHEN set_current_tenant_branding.logo_url IS NULL THEN t.logo_url
                             ELSE nullif(set_current_tenant_branding.logo_url, '') END,
        primary_color = CASE WHEN set_current_tenant_branding.primary_color IS NULL THEN t.primary_color
                             ELSE nullif(set_current_tenant_branding.primary_color, '') END
    WHERE t.id = tenant
    RETURNING t.display_name, t.logo_url, t.primary_color;
END
$$;

------------------------------------------------------------------------------
-- Settings and keys
------------------------------------------------------------------------------

CREATE FUNCTION tenancy.set_setting(name text, value text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF name IS NULL OR name NOT IN ('base_domain', 'jwt_audience', 'jwt_issuer',
                                    'jwt_leeway_seconds', 'tenant_claim', 'user_claim') THEN
        RAISE EXCEPTION 'unknown setting "%"', name
            USING ERRCODE = '22023',
                  HINT = 'Known settings: base_domain, jwt_audience, jwt_issuer, jwt_leeway_seconds, tenant_claim, user_claim.';
    END IF;
    IF value IS NULL OR btrim(value) = '' THEN
        RAISE EXCEPTION 'setting "%" must not be empty; use tenancy.reset_setting() to remove it', name
            USING ERRCODE = '22023';
    END IF;
    IF name = 'jwt_leeway_seconds' AND (value !~ '^[0-9]{1,3}$' OR value::int > 300) THEN
        RAISE EXCEPTION 'jwt_leeway_seconds must be a whole number of seconds from 0 to 300, not "%"', value
            USING ERRCODE = '22023';
    END IF;
    IF name = 'base_domain' THEN
        value := tenancy.normalize_host(value);
    END IF;
    INSERT INTO tenancy.settings AS s (name, value) VALUES (name, value)
    ON CONFLICT ON CONSTRAINT settings_pkey DO UPDATE SET value = excluded.value;
END
$$;

CREATE FUNCTION tenancy.reset_setting(name text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM tenancy.settings s WHERE s.name = reset_setting.name;
$$;

CREATE FUNCTION tenancy.add_key(kid text, algorithm text, key_material text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF kid IS NULL OR kid !~ '^[A-Za-z0-9._:-]{1,128}$' THEN
        RAISE EXCEPTION 'key id "%" is not valid', kid
            USING ERRCODE = '22023', HINT = 'Use 1 to 128 letters, digits, dots, colons, underscores or hyphens.';
    END IF;
    INSERT INTO tenancy.keys (kid, algorithm, key_material) VALUES (kid, algorithm, key_material);
EXCEPTION
    WHEN unique_violation THEN
        RAISE EXCEPTION 'a key with kid "%" already exists', kid
            USING ERRCODE = '23505', HINT = 'Key ids are never reused; add the new key under a new kid.';
END
$$;

-- The same, with the key material read from a file on the database server
-- (as the caller: reading server files needs pg_read_server_files), so an
-- HS secret never appears in any statement or parameter log. A trailing
-- newline is dropped from HS secrets; PEM keys are taken as they are.
CREATE FUNCTION tenancy.add_key_from_file(kid text, algorithm text, path text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    material text := pg_read_file(path);
BEGIN
    IF algorithm LIKE 'HS%' THEN
        material := rtrim(material, E'\r\n');
    END IF;
    PERFORM tenancy.add_key(kid, algorithm, material);
END
$$;

CREATE FUNCTION tenancy.retire_key(kid text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE tenancy.keys k SET retired_at = now() WHERE k.kid = retire_key.kid AND k.retired_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no active key with kid "%"', kid USING ERRCODE = 'P0002';
    END IF;
END
$$;

CREATE VIEW tenancy.key_list AS
    SELECT kid, algorithm, created_at, retired_at, retired_at IS NULL AS active
    FROM tenancy.keys;

------------------------------------------------------------------------------
-- Protecting tables
------------------------------------------------------------------------------

-- Fills the tenant column from the context and refuses rows that name another
-- tenant. Its name sorts before ordinary trigger names, so it runs first.
CREATE FUNCTION tenancy.fill_tenant_id() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col     text := TG_ARGV[0];
    given   uuid := (to_jsonb(NEW) ->> col)::uuid;
    current uuid;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF given IS DISTINCT FROM (to_jsonb(OLD) ->> col)::uuid THEN
            RAISE EXCEPTION 'a row cannot be moved to another tenant (%.%)', TG_TABLE_NAME, col
                USING ERRCODE = '42501';
        END IF;
        RETURN NEW;
    END IF;
    current := tenancy.current_tenant_id();
    IF current IS NULL THEN
        -- Only a bypassing tenancy_admin gets here: the row must name its tenant.
        RETURN NEW;
    END IF;
    IF given IS NULL THEN
        NEW := jsonb_populate_record(NEW, jsonb_build_object(col, current));
    ELSIF given <> current THEN
        RAISE EXCEPTION 'row names tenant % but the current tenant is %', given, current
            USING ERRCODE = '42501',
                  HINT = format('Omit %s; it is filled from the tenant context.', col);
    END IF;
    RETURN NEW;
END
$$;

-- Whether a table carries tenancy's isolation policy, and on which column.
CREATE FUNCTION tenancy.protected_column(tbl regclass) RETURNS name
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT split_part(encode(t.tgargs, 'escape'), '\000', 1)::name
    FROM pg_policy p
    JOIN pg_trigger t ON t.tgrelid = p.polrelid AND t.tgname = '0_tenancy_fill_tenant_id'
    WHERE p.polrelid = tbl AND p.polname = 'tenancy_isolation';
$$;

-- The schema rules isolation depends on, for one protected table:
-- * every unique constraint and unique index includes the tenant column
--   (otherwise a unique violation tells one tenant that another tenant holds
--   a value: the check does not apply row-level security);
-- * every foreign key between protected tables pairs the tenant columns
--   (otherwise the RI check, which ignores row-level security, lets a row
--   of tenant A point at a row of tenant B: seed REQ-MT-B010).
-- Violations raise 42P17 with the statement that fixes them. Indexes that
-- do not lead with the tenant column are allowed, with a WARNING: their
-- Index Cond runs before the policy, so EXPLAIN ANALYZE's row counts and
-- planner estimates over them describe every tenant's rows.
CREATE FUNCTION tenancy.check_protected_schema(tbl regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col    name := tenancy.protected_column(tbl);
    colnum smallint;
    r      record;
BEGIN
    IF col IS NULL THEN
        RETURN;
    END IF;
    SELECT a.attnum INTO colnum FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = col;

    FOR r IN
        SELECT i.indexrelid::regclass AS idx, k.conname
        FROM pg_index i LEFT JOIN pg_constraint k ON k.conindid = i.indexrelid AND k.conrelid = i.indrelid
        WHERE i.indrelid = tbl AND i.indisunique
          AND NOT colnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1])
    LOOP
        RAISE EXCEPTION 'unique % on % does not include the tenant column "%"',
                coalesce('constraint ' || quote_ident(r.conname), 'index ' || r.idx), tbl, col
            USING ERRCODE = '42P17',
                  DETAIL = 'A unique check ignores row-level security: a duplicate in another tenant '
                           'would be reported to this tenant, revealing that the value exists.',
                  HINT = format('Put %I first in the key, for example: %s', col, CASE
                      WHEN r.conname IS NOT NULL THEN format(
                          'ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I UNIQUE (%I, %s)',
                          tbl, r.conname, r.conname, col,
                          (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY o.n)
                           FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY o(num, n)
                           JOIN pg_attribute a ON a.attrelid = tbl AND a.attnum = o.num
                           WHERE i.indexrelid = r.idx))
                      ELSE format('DROP INDEX %s; then CREATE UNIQUE INDEX ... ON %s (%I, ...)', r.idx, tbl, col)
                  END);
    END LOOP;

    -- An exclusion constraint checks across tenants like a unique one.
    FOR r IN
        SELECT k.conname FROM pg_constraint k
        WHERE k.conrelid = tbl AND k.contype = 'x' AND NOT colnum = ANY (k.conkey)
    LOOP
        RAISE EXCEPTION 'exclusion constraint % on % does not include the tenant column "%"',
                quote_ident(r.conname), tbl, col
            USING ERRCODE = '42P17',
                  DETAIL = 'An exclusion check ignores row-level security: a conflict in another tenant '
                           'would be reported to this tenant.',
                  HINT = format('Add %I WITH = to the constraint.', col);
    END LOOP;

    FOR r IN
        SELECT k.conname, k.conrelid::regclass AS src, k.confrelid::regclass AS dst,
               k.conkey, k.confkey,
               (SELECT a.attnum FROM pg_attribute a
                WHERE a.attrelid = k.conrelid AND a.attname = tenancy.protected_column(k.conrelid)) AS src_col,
               (SELECT a.attnum FROM pg_attribute a
                WHERE a.attrelid = k.confrelid AND a.attname = tenancy.protected_column(k.confrelid)) AS dst_col
        FROM pg_constraint k
        WHERE k.contype = 'f' AND (k.conrelid = tbl OR k.confrelid = tbl)
          AND k.conparentid = 0
          AND tenancy.protected_column(k.conrelid) IS NOT NULL
          AND tenancy.protected_column(k.confrelid) IS NOT NULL
    LOOP
        IF NOT EXISTS (SELECT 1 FROM generate_subscripts(r.conkey, 1) g(i)
                       WHERE r.conkey[g.i] = r.src_col AND r.confkey[g.i] = r.dst_col) THEN
            RAISE EXCEPTION 'foreign key % from % to % does not include the tenant column',
                    quote_ident(r.conname), r.src, r.dst
                USING ERRCODE = '42P17',
                      DETAIL = 'A foreign key check ignores row-level security: a row of one tenant '
                               'could reference a row of another.',
                      HINT = format('Reference the tenant column too, for example: ALTER TABLE %s DROP CONSTRAINT %I, '
                                    'ADD FOREIGN KEY (tenant_id, ...) REFERENCES %s (tenant_id, ...)',
                                    r.src, r.conname, r.dst);
        END IF;
    END LOOP;

    FOR r IN
        SELECT i.indexrelid::regclass AS idx
        FROM pg_index i
        WHERE i.indrelid = tbl AND i.indkey[0] <> colnum AND NOT i.indisunique
    LOOP
        RAISE WARNING 'index % on % does not lead with the tenant column "%"', r.idx, tbl, col
            USING DETAIL = 'Its conditions run before the tenant policy: EXPLAIN ANALYZE row counts '
                           'and planner estimates through it describe every tenant''s rows.',
                  HINT = format('Lead with %I. EXPLAIN is refused to roles without tenancy.allow_explain.', col);
    END LOOP;
END
$$;

-- Citus (scale-out) moves a table's rows into shards the policies and the
-- trigger of protect() do not reach, and turns a table with a foreign key
-- to a reference table into a "Citus local table" whose rows move the
-- same way: protecting such a table would look protected and not be.
-- Refused, with what to do, until tenancy distributes tables itself.
CREATE FUNCTION tenancy.refuse_citus(tbl regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    kind text;
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN;
    END IF;
    EXECUTE 'SELECT CASE WHEN partmethod = ''n'' AND repmodel = ''t'' THEN ''reference'' '
            'WHEN partmethod = ''n'' THEN ''Citus local'' ELSE ''distributed'' END '
            'FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1'
        INTO kind USING tbl;
    IF kind IS NOT NULL THEN
        RAISE EXCEPTION '% is a % table of Citus: its rows live in shards that tenancy.protect() cannot guard', tbl, kind
            USING ERRCODE = '0A000',
                  HINT = 'tenancy does not protect Citus tables yet. Undistribute it (undistribute_table) to protect it on this node.';
    END IF;
    EXECUTE 'SELECT 1 FROM pg_catalog.pg_dist_partition WHERE logicalrelid = ''tenancy.tenants''::regclass'
        INTO kind;
    IF kind IS NOT NULL THEN
        RAISE EXCEPTION 'the tenancy catalog is a Citus table: a table protected now would become a Citus local table whose rows tenancy.protect() cannot guard'
            USING ERRCODE = '0A000',
                  HINT = 'tenancy does not run on a Citus catalog yet: undistribute_table(''tenancy.tenants'').';
    END IF;
END
$$;

CREATE FUNCTION tenancy.protect(tbl regclass, tenant_column name DEFAULT 'tenant_id') RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel        record;
    att        record;
    existing   text;
    using_expr text;
    child      regclass;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'a table is required' USING ERRCODE = '22023';
    END IF;
    SELECT c.relkind, c.relname, n.nspname, c.relispartition INTO rel
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation with oid % does not exist', tbl::oid USING ERRCODE = '42P01';
    END IF;
    IF rel.relkind = 'f' THEN
        -- A foreign table partition keeps its rows elsewhere: RLS here cannot guard them.
        RAISE EXCEPTION '% is a foreign table and cannot be protected', tbl
            USING ERRCODE = '42809',
                  HINT = 'Protect the table on the server that holds the rows, or detach it.';
    END IF;
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = '42809';
    END IF;
    IF rel.nspname = 'tenancy' THEN
        RAISE EXCEPTION 'the tenancy catalog cannot be protected' USING ERRCODE = '42809';
    END IF;
    IF NOT pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = tbl), 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table %', tbl USING ERRCODE = '42501';
    END IF;
    PERFORM tenancy.refuse_citus(tbl);

    SELECT a.attnum, a.atttypid, a.attnotnull, a.atthasdef INTO att
    FROM pg_attribute a
    WHERE a.attrelid = tbl AND a.attname = tenant_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of table % does not exist', tenant_column, tbl USING ERRCODE = '42703';
    END IF;
    IF att.atttypid <> 'uuid'::regtype THEN
        RAISE EXCEPTION 'column "%" of table % must be of type uuid, not %',
            tenant_column, tbl, format_type(att.atttypid, NULL) USING ERRCODE = '42804';
    END IF;

    SELECT split_part(encode(t.tgargs, 'escape'), '\000', 1) INTO existing
    FROM pg_trigger t WHERE t.tgrelid = tbl AND t.tgname = '0_tenancy_fill_tenant_id';
    IF existing IS NOT NULL AND existing <> tenant_column THEN
        RAISE EXCEPTION 'table % is already protected on column "%"', tbl, existing
            USING ERRCODE = '55000', HINT = 'Call tenancy.unprotect() first.';
    END IF;

    IF NOT att.attnotnull THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', tbl, tenant_column);
    END IF;
    -- The column default fills the tenant before a partitioned table routes
    -- the row (BEFORE triggers run only in the chosen partition).
    IF NOT att.atthasdef THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT tenancy.current_tenant_id()',
                       tbl, tenant_column);
    END IF;

    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint k
        WHERE k.conrelid = tbl AND k.contype = 'f'
          AND k.confrelid = 'tenancy.tenants'::regclass AND k.conkey = ARRAY[att.attnum]
    ) THEN
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I FOREIGN KEY (%I) REFERENCES tenancy.tenants (id)',
                       tbl, left(rel.relname || '_' || tenant_column || '_tenant_fkey', 63), tenant_column);
    END IF;

    -- The foreign key may have made it a Citus table (see refuse_citus).
    PERFORM tenancy.refuse_citus(tbl);

    IF NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = tbl AND i.indkey[0] = att.attnum) THEN
        EXECUTE format('CREATE INDEX %I ON %s (%I)',
                       left(rel.relname || '_' || tenant_column || '_idx', 63), tbl, tenant_column);
    END IF;

    -- Checked again here: the event trigger may have protected this table
    -- already, in reaction to the DDL above (a child of a protected parent).
    IF NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = tbl AND t.tgname = '0_tenancy_fill_tenant_id') THEN
        EXECUTE format('CREATE TRIGGER "0_tenancy_fill_tenant_id" BEFORE INSERT OR UPDATE OF %I ON %s
                        FOR EACH ROW EXECUTE FUNCTION tenancy.fill_tenant_id(%L)',
                       tenant_column, tbl, tenant_column);
    END IF;

    IF NOT (SELECT c.relrowsecurity FROM pg_class c WHERE c.oid = tbl) THEN
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    END IF;
    IF NOT (SELECT c.relforcerowsecurity FROM pg_class c WHERE c.oid = tbl) THEN
        EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
    END IF;

    -- The (SELECT ...) form is evaluated once per statement as an InitPlan and
    -- keeps the tenant index usable; see BENCHMARKS.md.
    using_expr := format('%I = (SELECT tenancy.current_tenant_id())', tenant_column);
    IF NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = tbl AND p.polname = 'tenancy_isolation') THEN
        EXECUTE format('CREATE POLICY tenancy_isolation ON %s AS PERMISSIVE FOR ALL TO PUBLIC
                        USING (%s) WITH CHECK (%s)', tbl, using_expr, using_expr);
    END IF;
    -- The bypass is a separate policy for tenancy_admin only, so the
    -- application role's plans never see it.
    IF NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = tbl AND p.polname = 'tenancy_bypass') THEN
        EXECUTE format('CREATE POLICY tenancy_bypass ON %s AS PERMISSIVE FOR ALL TO tenancy_admin
                        USING ((SELECT tenancy.bypass_active())) WITH CHECK ((SELECT tenancy.bypass_active()))', tbl);
    END IF;

    -- Row-level security is per table: a partition or an inheritance child
    -- read directly would show every tenant's rows. Each is protected too
    -- (and new ones as they are created or attached: tenancy.on_ddl).
    FOR child IN SELECT i.inhrelid::regclass FROM pg_inherits i WHERE i.inhparent = tbl ORDER BY i.inhrelid LOOP
        PERFORM tenancy.protect(child, tenant_column);
    END LOOP;

    PERFORM tenancy.check_protected_schema(tbl);
END
$$;

CREATE FUNCTION tenancy.unprotect(tbl regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    child regclass;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = tbl AND p.polname = 'tenancy_isolation') THEN
        RAISE EXCEPTION 'table % is not protected by tenancy', tbl USING ERRCODE = '42704';
    END IF;
    -- A partition's trigger is the parent's clone: it goes with the parent's.
    FOR child IN SELECT i.inhrelid::regclass FROM pg_inherits i WHERE i.inhparent = tbl LOOP
        IF tenancy.protected_column(child) IS NOT NULL THEN
            PERFORM tenancy.unprotect(child);
        END IF;
    END LOOP;
    EXECUTE format('DROP POLICY tenancy_isolation ON %s', tbl);
    EXECUTE format('DROP POLICY IF EXISTS tenancy_bypass ON %s', tbl);
    IF NOT EXISTS (SELECT 1 FROM pg_trigger t
                   WHERE t.tgrelid = tbl AND t.tgname = '0_tenancy_fill_tenant_id' AND t.tgparentid <> 0) THEN
        EXECUTE format('DROP TRIGGER IF EXISTS "0_tenancy_fill_tenant_id" ON %s', tbl);
    END IF;
    EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', tbl);
    EXECUTE format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', tbl);
END
$$;

-- After DDL: a table created as (or attached as) a partition or child of a
-- protected table is protected like its parent, and a protected table that
-- gained a unique constraint or foreign key is checked again. Runs as the
-- role that issued the DDL, which owns what it created.
CREATE FUNCTION tenancy.on_ddl() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cmd    record;
    r      record;
    tables oid[] := '{}';
BEGIN
    FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        IF cmd.classid = 'pg_class'::regclass AND cmd.objsubid = 0 THEN
            tables := tables || cmd.objid;
        END IF;
    END LOOP;
    IF cardinality(tables) = 0 THEN
        RETURN;
    END IF;
    -- Indexes: check the table they belong to.
    tables := tables || ARRAY(SELECT i.indrelid FROM pg_index i WHERE i.indexrelid = ANY (tables));
    -- Every unprotected table below a protected parent among those touched
    -- (CREATE TABLE ... PARTITION OF / INHERITS names the child; ATTACH
    -- PARTITION and INHERIT the parent).
    FOR r IN
        WITH RECURSIVE tree(parent, child) AS (
            SELECT i.inhparent, i.inhrelid FROM pg_inherits i
            WHERE i.inhrelid = ANY (tables) OR i.inhparent = ANY (tables)
            UNION
            SELECT i.inhparent, i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.child
        )
        SELECT DISTINCT t.child::regclass AS child, tenancy.protected_column(t.parent) AS col
        FROM tree t
        WHERE tenancy.protected_column(t.parent) IS NOT NULL
          AND tenancy.protected_column(t.child) IS NULL
    LOOP
        PERFORM tenancy.protect(r.child, r.col);
    END LOOP;
    FOR r IN SELECT DISTINCT c.oid::regclass AS tbl FROM pg_class c
             WHERE c.oid = ANY (tables) AND c.relkind IN ('r', 'p')
               AND tenancy.protected_column(c.oid) IS NOT NULL LOOP
        PERFORM tenancy.check_protected_schema(r.tbl);
    END LOOP;
END
$$;

-- Planning any statement over a protected table calls this support
-- function (the policies call current_tenant_id()), which loads the
-- library, so its executor checks hold from the first statement of a
-- session: no context, no read, whatever the plan; no EXPLAIN of hidden rows.
ALTER FUNCTION tenancy.current_tenant_id() SUPPORT tenancy.context_support;
REVOKE EXECUTE ON FUNCTION tenancy.context_support(internal) FROM PUBLIC;

CREATE EVENT TRIGGER tenancy_on_ddl ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE', 'CREATE INDEX')
    EXECUTE FUNCTION tenancy.on_ddl();

CREATE VIEW tenancy.protected_tables AS
SELECT c.oid::regclass                                       AS table_name,
       n.nspname                                             AS schema_name,
       c.relname                                             AS relation_name,
       split_part(encode(t.tgargs, 'escape'), '\000', 1)::name AS tenant_column,
       c.relrowsecurity                                      AS rls_enabled,
       c.relforcerowsecurity                                 AS rls_forced,
       EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a
                 ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
               WHERE i.indrelid = c.oid
                 AND a.attname = split_part(encode(t.tgargs, 'escape'), '\000', 1)) AS tenant_index,
       (SELECT i.inhparent::regclass FROM pg_inherits i WHERE i.inhrelid = c.oid LIMIT 1) AS parent_table
FROM pg_policy p
JOIN pg_class c ON c.oid = p.polrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_trigger t ON t.tgrelid = c.oid AND t.tgname = '0_tenancy_fill_tenant_id'
WHERE p.polname = 'tenancy_isolation';
GRANT SELECT ON tenancy.protected_tables TO PUBLIC;

------------------------------------------------------------------------------
-- Grants for deployment roles (run by a superuser)
------------------------------------------------------------------------------

-- Lets one chosen role (the service) set the trusted context GUCs.
CREATE FUNCTION tenancy.grant_context_setter(role regrole) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('GRANT SET ON PARAMETER tenancy.tenant_id TO %s', role);
    EXECUTE format('GRANT SET ON PARAMETER tenancy.user_id TO %s', role);
END
$$;

-- Lets a schema-owner role reference the catalog from its tables (protect()
-- adds a foreign key to tenancy.tenants).
CREATE FUNCTION tenancy.grant_table_owner(role regrole) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('GRANT REFERENCES (id) ON tenancy.tenants TO %s', role);
END
$$;

------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------

REVOKE EXECUTE ON FUNCTION
    tenancy.create_tenant(text, text, text, jsonb, text, text),
    tenancy.set_tenant_status(uuid, text),
    tenancy.drop_tenant(uuid),
    tenancy.add_domain(uuid, text),
    tenancy.remove_domain(text),
    tenancy.set_setting(text, text),
    tenancy.reset_setting(text),
    tenancy.add_key(text, text, text),
    tenancy.add_key_from_file(text, text, text),
    tenancy.retire_key(text),
    tenancy.grant_context_setter(regrole),
    tenancy.grant_table_owner(regrole),
    tenancy.write_audit(text, uuid, text, jsonb),
    tenancy.invalidate_cache(oid)
FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    tenancy.create_tenant(text, text, text, jsonb, text, text),
    tenancy.set_tenant_status(uuid, text),
    tenancy.drop_tenant(uuid),
    tenancy.add_domain(uuid, text),
    tenancy.remove_domain(text),
    tenancy.set_setting(text, text),
    tenancy.reset_setting(text),
    tenancy.add_key(text, text, text),
    tenancy.add_key_from_file(text, text, text),
    tenancy.retire_key(text),
    tenancy.write_audit(text, uuid, text, jsonb),
    tenancy.invalidate_cache(oid)
TO tenancy_admin;

GRANT INSERT (slug, name, display_name, configuration, logo_url, primary_color),
      UPDATE (slug, name, display_name, configuration, logo_url, primary_color, status, updated_at)
    ON tenancy.tenants TO tenancy_admin;
-- Removing tenants (tenancy.drop_tenant); a tenant that still has rows is
-- held by their foreign keys.
GRANT DELETE ON tenancy.tenants TO tenancy_admin;
GRANT INSERT, DELETE ON tenancy.domains TO tenancy_admin;
GRANT INSERT, UPDATE, DELETE ON tenancy.settings TO tenancy_admin;
GRANT SELECT (kid, algorithm, created_at, retired_at),
      INSERT (kid, algorithm, key_material),
      UPDATE (retired_at)
    ON tenancy.keys TO tenancy_admin;
GRANT SELECT ON tenancy.key_list TO tenancy_admin;
