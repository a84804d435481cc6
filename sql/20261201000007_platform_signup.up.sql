-- Signup that creates a tenant, where the operator enables it
-- (TENANCY_PLATFORM_SIGNUP). The tenant's slug is reserved at once: its
-- catalog row exists, inactive, and is removed with everything in it when
-- the link is not used in time (as a deletion whose grace period ends
-- with the link). The verification mail goes through that tenant's own
-- outbox. Using the link activates the tenant and provisions it with the
-- person as owner. The link's secret is stored only as its SHA-256, the
-- chosen password only as its argon2id hash. Owner role only: the
-- application role has no access.

CREATE TABLE app.tenant_signups (
    token_hash    bytea       PRIMARY KEY CHECK (length(token_hash) = 32),
    tenant        uuid        NOT NULL UNIQUE REFERENCES tenancy.tenants (id) ON DELETE CASCADE,
    email         text        NOT NULL CHECK (email ~ '^[^@\s]+@[^@\s]+$' AND length(email) <= 254),
    password_hash text        NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz
);
