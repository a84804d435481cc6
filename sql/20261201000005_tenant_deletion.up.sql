-- A tenant's owner deletes it: the tenant is deactivated at once (its
-- members are refused, their WebSockets closed), the owner may undo it
-- during a grace period, and after it the service removes the tenant and
-- all its rows (tenancy.drop_tenant). Owner-only table: the service's
-- owner role writes it; the application role has no access.

CREATE TABLE app.tenant_deletions (
    tenant       uuid        PRIMARY KEY REFERENCES tenancy.tenants (id) ON DELETE CASCADE,
    requested_by uuid        REFERENCES app.users (id) ON DELETE SET NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    purge_after  timestamptz NOT NULL
);
CREATE INDEX tenant_deletions_purge_idx ON app.tenant_deletions (purge_after);
