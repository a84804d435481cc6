-- Undoing docs/adopting.sql, while the adopted rows are still the only
-- tenant's (once other tenants have rows, keys without the tenant column
-- may no longer hold: merge or remove those rows first). Same rules: each
-- "-- step:" on its own, the long work without long locks.
-- tests/e2e/adopting.rs runs it and checks the schema is as it was.

-- step: children first
SELECT tenancy.unprotect('orders');

-- step:
SELECT tenancy.unprotect('customers');

-- step: writes without a tenant context work again at once: the column
-- (NOT NULL, in the keys until the swap) takes the adopted tenant by default
DO $$
DECLARE
    legacy uuid := (SELECT id FROM tenancy.tenants WHERE slug = 'legacy');
BEGIN
    EXECUTE format('ALTER TABLE orders ALTER COLUMN tenant_id SET DEFAULT %L', legacy);
    EXECUTE format('ALTER TABLE customers ALTER COLUMN tenant_id SET DEFAULT %L', legacy);
END
$$;

-- step: the single-tenant keys, built without blocking writes
CREATE UNIQUE INDEX CONCURRENTLY customers_id ON customers (id);

-- step:
CREATE UNIQUE INDEX CONCURRENTLY customers_email ON customers (email);

-- step:
CREATE UNIQUE INDEX CONCURRENTLY orders_id ON orders (id);

-- step: the swap back, short, in one transaction
BEGIN;
ALTER TABLE orders DROP CONSTRAINT orders_customer_id_fkey;
ALTER TABLE customers DROP CONSTRAINT customers_pkey,
    ADD CONSTRAINT customers_pkey PRIMARY KEY USING INDEX customers_id;
ALTER TABLE customers DROP CONSTRAINT customers_email_key,
    ADD CONSTRAINT customers_email_key UNIQUE USING INDEX customers_email;
ALTER TABLE orders DROP CONSTRAINT orders_pkey,
    ADD CONSTRAINT orders_pkey PRIMARY KEY USING INDEX orders_id;
ALTER TABLE orders ADD CONSTRAINT orders_customer_id_fkey
    FOREIGN KEY (customer_id) REFERENCES customers (id) NOT VALID;
COMMIT;

-- step:
ALTER TABLE orders VALIDATE CONSTRAINT orders_customer_id_fkey;

-- step: the columns go (with the foreign keys to the catalog protect() added)
ALTER TABLE orders DROP COLUMN tenant_id;

-- step:
ALTER TABLE customers DROP COLUMN tenant_id;

-- step: and the tenant
SELECT tenancy.set_tenant_status(id, 'inactive') FROM tenancy.tenants WHERE slug = 'legacy';

-- step:
SELECT tenancy.drop_tenant(id) FROM tenancy.tenants WHERE slug = 'legacy';
