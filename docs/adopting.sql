-- Adopting an existing single-tenant schema: the example of docs/ADOPTING.md,
-- step by step. Each "-- step:" runs on its own (outside a transaction
-- block: CREATE INDEX CONCURRENTLY and the batched backfill's COMMITs need
-- that), as psql would run this file with autocommit. tests/e2e/adopting.rs
-- runs exactly this file against a schema like the one below, with rows.
--
-- Before:
--   customers (id bigint PRIMARY KEY, email text UNIQUE, name text)
--   orders    (id bigint PRIMARY KEY, customer_id bigint REFERENCES customers (id), total numeric)

-- step: the tenant every existing row belongs to
SELECT tenancy.create_tenant('legacy', 'Legacy');

-- step: the column, nullable and without a default: a catalog change, no table rewrite
ALTER TABLE customers ADD COLUMN tenant_id uuid;

-- step:
ALTER TABLE orders ADD COLUMN tenant_id uuid;

-- step: rows the application writes from now on belong to the adopted
-- tenant too (existing rows stay NULL until the backfill: a default set
-- after ADD COLUMN does not touch them)
DO $$
DECLARE
    legacy uuid := (SELECT id FROM tenancy.tenants WHERE slug = 'legacy');
BEGIN
    EXECUTE format('ALTER TABLE customers ALTER COLUMN tenant_id SET DEFAULT %L', legacy);
    EXECUTE format('ALTER TABLE orders ALTER COLUMN tenant_id SET DEFAULT %L', legacy);
END
$$;

-- step: a batched backfill; each batch commits, so no lock is held long
CREATE PROCEDURE tenancy_adopt_backfill(tbl regclass, parent regclass, parent_key text, child_key text, batch int)
LANGUAGE plpgsql AS $$
DECLARE
    done bigint;
BEGIN
    LOOP
        IF parent IS NULL THEN
            -- Roots take the tenant every existing row belongs to.
            EXECUTE format(
                'UPDATE %s SET tenant_id = (SELECT id FROM tenancy.tenants WHERE slug = %L)
                 WHERE ctid = ANY (ARRAY(SELECT ctid FROM %s WHERE tenant_id IS NULL LIMIT %s))',
                tbl, 'legacy', tbl, batch);
        ELSE
            -- Children take their parent's tenant; a row without a parent
            -- (a NULL or dangling key) the adopted tenant, so that every
            -- batch makes progress.
            EXECUTE format(
                'UPDATE %s c SET tenant_id = coalesce(
                     (SELECT p.tenant_id FROM %s p WHERE p.%I = c.%I),
                     (SELECT id FROM tenancy.tenants WHERE slug = %L))
                 WHERE c.ctid = ANY (ARRAY(SELECT ctid FROM %s WHERE tenant_id IS NULL LIMIT %s))',
                tbl, parent, parent_key, child_key, 'legacy', tbl, batch);
        END IF;
        GET DIAGNOSTICS done = ROW_COUNT;
        COMMIT;
        EXIT WHEN done = 0;
    END LOOP;
END
$$;

-- step:
CALL tenancy_adopt_backfill('customers', NULL, NULL, NULL, 500);

-- step:
CALL tenancy_adopt_backfill('orders', 'customers', 'id', 'customer_id', 500);

-- step: NOT NULL without a long lock: a CHECK added NOT VALID, validated
-- while writes go on, lets SET NOT NULL (in protect) skip its table scan
ALTER TABLE customers ADD CONSTRAINT customers_tenant_id_set CHECK (tenant_id IS NOT NULL) NOT VALID;

-- step:
ALTER TABLE customers VALIDATE CONSTRAINT customers_tenant_id_set;

-- step:
ALTER TABLE orders ADD CONSTRAINT orders_tenant_id_set CHECK (tenant_id IS NOT NULL) NOT VALID;

-- step:
ALTER TABLE orders VALIDATE CONSTRAINT orders_tenant_id_set;

-- step:
ALTER TABLE customers ALTER COLUMN tenant_id SET NOT NULL;

-- step:
ALTER TABLE orders ALTER COLUMN tenant_id SET NOT NULL;

-- step: keys that include the tenant, built without blocking writes
CREATE UNIQUE INDEX CONCURRENTLY customers_tenant_id_id ON customers (tenant_id, id);

-- step:
CREATE UNIQUE INDEX CONCURRENTLY customers_tenant_id_email ON customers (tenant_id, email);

-- step:
CREATE UNIQUE INDEX CONCURRENTLY orders_tenant_id_id ON orders (tenant_id, id);

-- step: the swap: short, in one transaction (the foreign key goes first,
-- it depends on the old key; it comes back NOT VALID, checked next)
BEGIN;
ALTER TABLE orders DROP CONSTRAINT orders_customer_id_fkey;
ALTER TABLE customers DROP CONSTRAINT customers_pkey,
    ADD CONSTRAINT customers_pkey PRIMARY KEY USING INDEX customers_tenant_id_id;
ALTER TABLE customers DROP CONSTRAINT customers_email_key,
    ADD CONSTRAINT customers_email_key UNIQUE USING INDEX customers_tenant_id_email;
ALTER TABLE orders DROP CONSTRAINT orders_pkey,
    ADD CONSTRAINT orders_pkey PRIMARY KEY USING INDEX orders_tenant_id_id;
ALTER TABLE orders ADD CONSTRAINT orders_customer_id_fkey
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id) NOT VALID;
COMMIT;

-- step:
ALTER TABLE orders VALIDATE CONSTRAINT orders_customer_id_fkey;

-- step: the foreign key to the tenant catalog protect() would add, added
-- here NOT VALID and validated while writes go on (protect() then keeps it)
ALTER TABLE customers ADD CONSTRAINT customers_tenant_id_tenant_fkey
    FOREIGN KEY (tenant_id) REFERENCES tenancy.tenants (id) NOT VALID;

-- step:
ALTER TABLE customers VALIDATE CONSTRAINT customers_tenant_id_tenant_fkey;

-- step:
ALTER TABLE orders ADD CONSTRAINT orders_tenant_id_tenant_fkey
    FOREIGN KEY (tenant_id) REFERENCES tenancy.tenants (id) NOT VALID;

-- step:
ALTER TABLE orders VALIDATE CONSTRAINT orders_tenant_id_tenant_fkey;

-- step: protect, parents first, each with the adopted tenant's default
-- replaced by the context's in the same transaction; then the temporary
-- checks and procedure go
BEGIN;
ALTER TABLE customers ALTER COLUMN tenant_id DROP DEFAULT;
SELECT tenancy.protect('customers');
COMMIT;

-- step:
BEGIN;
ALTER TABLE orders ALTER COLUMN tenant_id DROP DEFAULT;
SELECT tenancy.protect('orders');
COMMIT;

-- step:
ALTER TABLE customers DROP CONSTRAINT customers_tenant_id_set;

-- step:
ALTER TABLE orders DROP CONSTRAINT orders_tenant_id_set;

-- step:
DROP PROCEDURE tenancy_adopt_backfill(regclass, regclass, text, text, int);
