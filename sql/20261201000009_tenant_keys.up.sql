-- Tenant data keys and tenant integrations (seed 002, REQ-MT-B009, B011).
--
-- Each tenant has data keys, versioned, stored only wrapped by the platform
-- key the service holds (never the database): kek_id names which platform
-- key wraps each one. Fields the service seals carry the key version they
-- were sealed under. Destroying a tenant's keys (wrapped set to NULL) makes
-- every sealed value of it unreadable, wherever a copy went.

-- The platform keys in use, by id: registered by the service when it
-- starts with one, removed once `rotate-data-key` moved every tenant key
-- off it. A tenant key can only name a registered platform key, so no role
-- below the owner can plant a key the service would refuse to start for.
CREATE TABLE app.platform_keys (
    kek_id        text        PRIMARY KEY CHECK (kek_id ~ '^[0-9a-f]{16}$'),
    registered_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE app.tenant_keys (
    tenant_id    uuid        NOT NULL,
    version      integer     NOT NULL CHECK (version > 0),
    wrapped      bytea       CHECK (length(wrapped) BETWEEN 40 AND 128),
    kek_id       text        NOT NULL REFERENCES app.platform_keys (kek_id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Set when a newer version replaced it; it still opens what it sealed
    -- until the rotation has resealed everything.
    retired_at   timestamptz,
    destroyed_at timestamptz,
    CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL)),
    PRIMARY KEY (tenant_id, version)
);
SELECT tenancy.protect('app.tenant_keys');

-- A tenant's own providers: payment gateway, email (SMTP), SMS, analytics.
-- The configuration is sealed with the tenant's data key; `masked` is what
-- the API shows (no secret in it).
CREATE TABLE app.tenant_integrations (
    tenant_id   uuid        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('payment', 'email', 'sms', 'analytics')),
    key_version integer     NOT NULL,
    sealed      bytea       NOT NULL CHECK (length(sealed) <= 16384),
    masked      jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  uuid,
    PRIMARY KEY (tenant_id, kind),
    FOREIGN KEY (tenant_id, key_version) REFERENCES app.tenant_keys (tenant_id, version)
);
SELECT tenancy.protect('app.tenant_integrations');

-- Which platform keys wrap some tenant's live data key (ids only): the
-- service refuses to start without every one of them.
CREATE FUNCTION app.data_key_wrappers() RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('app.cross_tenant', 'key_custodian', true);
    RETURN QUERY SELECT DISTINCT k.kek_id FROM app.tenant_keys k WHERE k.wrapped IS NOT NULL;
    PERFORM set_config('app.cross_tenant', '', true);
END
$$;

-- Up to `batch` live data keys not wrapped by platform key `keep`, after
-- (after_tenant, after_version) in key order, locked, for rewrapping.
CREATE FUNCTION app.data_keys_to_rewrap(keep text, after_tenant uuid, after_version integer, batch integer)
RETURNS TABLE (tenant_id uuid, version integer, kek_id text, wrapped bytea)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('app.cross_tenant', 'key_custodian', true);
    RETURN QUERY SELECT k.tenant_id, k.version, k.kek_id, k.wrapped FROM app.tenant_keys k
    WHERE k.wrapped IS NOT NULL AND k.kek_id <> keep
      AND (k.tenant_id, k.version) > (after_tenant, after_version)
    ORDER BY k.tenant_id, k.version LIMIT batch FOR UPDATE;
    PERFORM set_config('app.cross_tenant', '', true);
END
$$;

CREATE FUNCTION app.rewrap_data_key(tenant uuid, key_version integer, new_kek text, new_wrapped bytea) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('app.cross_tenant', 'key_custodian', true);
    UPDATE app.tenant_keys k SET wrapped = new_wrapped, kek_id = new_kek
    WHERE k.tenant_id = tenant AND k.version = key_version AND k.wrapped IS NOT NULL;
    PERFORM set_config('app.cross_tenant', '', true);
END
$$;

-- A new version of the current tenant's data key, current from now on; the
-- others are retired (resealing then moves every value to it). The one way
-- to retire a key: the application role cannot change key rows.
CREATE FUNCTION app.rotate_tenant_key(next_version integer, next_wrapped bytea, next_kek text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tenant uuid := tenancy.current_tenant_id();
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'tenant context required' USING ERRCODE = '42501';
    END IF;
    -- One rotation at a time per tenant.
    PERFORM 1 FROM app.tenant_keys k WHERE k.tenant_id = tenant FOR UPDATE;
    IF next_version <> coalesce((SELECT max(k.version) FROM app.tenant_keys k WHERE k.tenant_id = tenant), 0) + 1 THEN
        RETURN false;
    END IF;
    INSERT INTO app.tenant_keys (tenant_id, version, wrapped, kek_id)
    VALUES (tenant, next_version, next_wrapped, next_kek);
    UPDATE app.tenant_keys k SET retired_at = now()
    WHERE k.tenant_id = tenant AND k.version < next_version AND k.retired_at IS NULL;
    RETURN true;
END
$$;

-- Destroys every data key of a tenant (crypto-shredding): run before its
-- rows are removed, so no copy of them (backup, replica, export) can be
-- read with a key from this database again.
CREATE FUNCTION app.shred_tenant_keys(tenant uuid) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    PERFORM set_config('app.cross_tenant', 'key_custodian', true);
    UPDATE app.tenant_keys k SET wrapped = NULL, destroyed_at = now()
    WHERE k.tenant_id = tenant AND k.wrapped IS NOT NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('app.cross_tenant', '', true);
    RETURN n;
END
$$;

-- The sealed email integration of each tenant of `tenants` that has one,
-- with the data key that opens it (wrapped NULL once destroyed: the
-- tenant's mail then waits rather than go out through another server): the
-- mail sender's only view of them.
CREATE FUNCTION app.mail_integrations(tenants uuid[])
RETURNS TABLE (tenant_id uuid, updated_at timestamptz, key_version integer, sealed bytea, kek_id text, wrapped bytea)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('app.cross_tenant', 'key_custodian', true);
    RETURN QUERY SELECT i.tenant_id, i.updated_at, i.key_version, i.sealed, k.kek_id, k.wrapped
    FROM app.tenant_integrations i
    JOIN app.tenant_keys k ON k.tenant_id = i.tenant_id AND k.version = i.key_version
    WHERE i.kind = 'email' AND i.tenant_id = ANY (tenants);
    PERFORM set_config('app.cross_tenant', '', true);
END
$$;

DO $do$
BEGIN
    EXECUTE format($p$
        CREATE POLICY unconfined_key_custodian ON app.tenant_keys FOR ALL TO %I
            USING ((SELECT app.cross_tenant('key_custodian')))
            WITH CHECK ((SELECT app.cross_tenant('key_custodian')))
    $p$, current_user);
    EXECUTE format($p$
        CREATE POLICY unconfined_key_custodian ON app.tenant_integrations FOR SELECT TO %I
            USING ((SELECT app.cross_tenant('key_custodian')))
    $p$, current_user);
END
$do$;

REVOKE EXECUTE ON FUNCTION app.data_key_wrappers(), app.data_keys_to_rewrap(text, uuid, integer, integer),
    app.rewrap_data_key(uuid, integer, text, bytea), app.shred_tenant_keys(uuid),
    app.mail_integrations(uuid[])
    FROM PUBLIC;

-- Rotation: tenants with values still sealed under a retired data key.
CREATE FUNCTION app.rekey_due(batch integer) RETURNS SETOF uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('app.cross_tenant', 'key_custodian', true);
    RETURN QUERY SELECT i.tenant_id FROM app.tenant_integrations i
    JOIN app.tenant_keys k ON k.tenant_id = i.tenant_id AND k.version = i.key_version
    JOIN tenancy.tenants t ON t.id = i.tenant_id
    WHERE k.retired_at IS NOT NULL AND k.wrapped IS NOT NULL AND t.status = 'active'
    GROUP BY i.tenant_id ORDER BY min(k.retired_at) LIMIT batch;
    PERFORM set_config('app.cross_tenant', '', true);
END
$$;

-- Destroys a tenant's retired data keys that no value is sealed under any
-- more (a rotation is complete); returns how many.
CREATE FUNCTION app.destroy_retired_keys(tenant uuid) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    PERFORM set_config('app.cross_tenant', 'key_custodian', true);
    -- Locked first: a write sealing under one of these keys holds it FOR
    -- SHARE until it commits, and the check below, a statement of its own,
    -- then sees what it wrote.
    PERFORM 1 FROM app.tenant_keys k
    WHERE k.tenant_id = tenant AND k.retired_at IS NOT NULL AND k.wrapped IS NOT NULL FOR UPDATE;
    UPDATE app.tenant_keys k SET wrapped = NULL, destroyed_at = now()
    WHERE k.tenant_id = tenant AND k.retired_at IS NOT NULL AND k.wrapped IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM app.tenant_integrations i
                      WHERE i.tenant_id = tenant AND i.key_version = k.version);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('app.cross_tenant', '', true);
    RETURN n;
END
$$;
REVOKE EXECUTE ON FUNCTION app.rekey_due(integer), app.destroy_retired_keys(uuid) FROM PUBLIC;

-- Registering the platform keys the service holds (at its start), and
-- forgetting one no tenant key uses any more (after rotate-data-key).
CREATE FUNCTION app.register_platform_keys(ids text[]) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO app.platform_keys (kek_id) SELECT unnest(ids) ON CONFLICT DO NOTHING;
$$;
CREATE FUNCTION app.forget_platform_keys(keep text) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    PERFORM set_config('app.cross_tenant', 'key_custodian', true);
    DELETE FROM app.platform_keys p WHERE p.kek_id <> keep
      AND NOT EXISTS (SELECT 1 FROM app.tenant_keys k WHERE k.kek_id = p.kek_id);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('app.cross_tenant', '', true);
    RETURN n;
END
$$;
REVOKE EXECUTE ON FUNCTION app.register_platform_keys(text[]), app.forget_platform_keys(text) FROM PUBLIC;
