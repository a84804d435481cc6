DROP VIEW app.tenant_usage;
CREATE TABLE app.tenant_usage_total AS
SELECT tenant_id, greatest(sum(storage_bytes), 0)::bigint AS storage_bytes
FROM app.tenant_usage_shards GROUP BY tenant_id;
DELETE FROM app.tenant_usage_shards;
ALTER TABLE app.tenant_usage_shards DROP CONSTRAINT tenant_usage_shards_pkey;
ALTER TABLE app.tenant_usage_shards DROP COLUMN shard;
ALTER TABLE app.tenant_usage_shards ADD CONSTRAINT tenant_usage_pkey PRIMARY KEY (tenant_id);
INSERT INTO app.tenant_usage_shards (tenant_id, storage_bytes)
SELECT tenant_id, storage_bytes FROM app.tenant_usage_total;
DROP TABLE app.tenant_usage_total;
ALTER TABLE app.tenant_usage_shards RENAME TO tenant_usage;

CREATE OR REPLACE FUNCTION app.track_storage() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tenant  uuid;
    delta   bigint := 0;
    total   bigint;
    allowed bigint;
BEGIN
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
