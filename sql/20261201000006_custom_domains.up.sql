-- Custom domains a tenant's admins manage through the API. A domain is
-- first claimed (pending, with a verification value the tenant publishes
-- as a DNS TXT record at _tenancy-challenge.<domain>); only once the record
-- is seen does the service map it in tenancy.domains, so nobody can take a
-- domain they do not control, and a pending claim blocks no one: several
-- tenants may claim the same name, the one who proves it gets it.

CREATE TABLE app.domain_claims (
    tenant_id    uuid        NOT NULL,
    domain       text        NOT NULL CHECK (length(domain) <= 253),
    token        text        NOT NULL CHECK (length(token) = 32),
    requested_by uuid,
    requested_at timestamptz NOT NULL DEFAULT now(),
    verified_at  timestamptz,
    PRIMARY KEY (tenant_id, domain)
);
SELECT tenancy.protect('app.domain_claims');
