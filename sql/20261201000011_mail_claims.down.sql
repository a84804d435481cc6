DROP FUNCTION app.mail_integrations(uuid[]);
CREATE FUNCTION app.mail_integrations(tenants uuid[])
RETURNS TABLE (tenant_id uuid, updated_at timestamptz, key_version integer, sealed bytea, kek_id text, wrapped bytea)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('app.cross_tenant', 'key_custodian', true);
    RETURN QUERY SELECT i.tenant_id, i.updated_at, i.key_version, i.sealed, k.kek_id, k.wrapped
    FROM app.tenant_integrations i
    JOIN app.tenant_keys k ON k.tenant_id = i.tenant_id AND k.version = i.key_version
    WHERE i.kind = 'email' AND i.tenant_id = ANY (tenants) AND k.wrapped IS NOT NULL;
    PERFORM set_config('app.cross_tenant', '', true);
END
$$;
REVOKE EXECUTE ON FUNCTION app.mail_integrations(uuid[]) FROM PUBLIC;
DROP FUNCTION app.mail_claim(integer, interval);
