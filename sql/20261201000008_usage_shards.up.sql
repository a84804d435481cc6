-- Storage accounting without one hot row per tenant: each backend adds its
-- deltas to one of 16 rows of its tenant (chosen by its process id), so a
-- tenant's concurrent writers no longer queue behind one row lock.
-- app.tenant_usage stays what it was to every reader: one row per tenant,
-- now the sum of its shards.
--
-- The limit is checked against the sum as this transaction sees it: writers
-- running at the same moment do not see each other's uncommitted bytes, so a
-- tenant can pass its storage limit by at most what its concurrent requests
-- write at once (its share of the pool, TENANCY_TENANT_DB_SHARE, times one
-- request's content). Once past it, every growth is refused.
ALTER TABLE app.tenant_usage RENAME TO tenant_usage_shards;
ALTER TABLE app.tenant_usage_shards ADD COLUMN shard smallint NOT NULL DEFAULT 0
    CHECK (shard BETWEEN 0 AND 15);
ALTER TABLE app.tenant_usage_shards DROP CONSTRAINT tenant_usage_pkey;
ALTER TABLE app.tenant_usage_shards ADD PRIMARY KEY (tenant_id, shard);

CREATE VIEW app.tenant_usage WITH (security_invoker = true) AS
SELECT tenant_id, sum(storage_bytes)::bigint AS storage_bytes
FROM app.tenant_usage_shards GROUP BY tenant_id;

CREATE OR REPLACE FUNCTION app.track_storage() RETURNS trigger
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
    IF delta = 0 THEN
        RETURN NULL;
    END IF;
    -- A shard may go below zero (bytes written through one backend, deleted
    -- through another); the sum is what counts.
    INSERT INTO app.tenant_usage_shards AS u (tenant_id, shard, storage_bytes)
    VALUES (tenant, pg_backend_pid() % 16, delta)
    ON CONFLICT (tenant_id, shard) DO UPDATE SET storage_bytes = u.storage_bytes + delta;
    IF delta > 0 THEN
        SELECT l.storage_bytes INTO allowed FROM app.tenant_limits l WHERE l.tenant_id = tenant;
        IF allowed IS NOT NULL THEN
            SELECT sum(s.storage_bytes) INTO total FROM app.tenant_usage_shards s
            WHERE s.tenant_id = tenant;
            IF total > allowed THEN
                RAISE EXCEPTION 'Limit reached: storage_bytes (%)', allowed
                    USING ERRCODE = '53400',
                          DETAIL = format('%s of %s bytes in use', total - delta, allowed);
            END IF;
        END IF;
    END IF;
    RETURN NULL;
END
$$;
