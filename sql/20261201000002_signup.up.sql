-- Public signup into a tenant that allows it (its `allow_public_signup`).
-- The account exists at once but cannot log in: its password hash carries
-- the prefix `unverified:` (not a hash login accepts, so a login answers
-- exactly as for a wrong password) until the person opens the link mailed
-- to the address and confirms with the password chosen. Then the prefix
-- goes and the membership is made. The
-- link's secret is stored only as its SHA-256. An address that already has
-- an account gets no second one, and the answer does not say so.

CREATE TABLE app.signups (
    token_hash bytea       PRIMARY KEY CHECK (length(token_hash) = 32),
    tenant     uuid        NOT NULL REFERENCES tenancy.tenants (id) ON DELETE CASCADE,
    user_id    uuid        NOT NULL REFERENCES app.users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX signups_user_idx ON app.signups (user_id);
CREATE INDEX signups_expires_idx ON app.signups (expires_at);

-- The active tenant with this slug that accepts signups; NULL otherwise.
CREATE FUNCTION app.signup_tenant(tenant_slug text) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT t.id FROM tenancy.tenants t
    WHERE t.slug = lower(btrim(tenant_slug)) AND t.status = 'active'
      AND coalesce(t.configuration -> 'allow_public_signup' = 'true'::jsonb, false);
$$;

-- A signup: a new account (or one never verified, whose password the
-- person who controls the mailbox sets) waiting for its link. Returns the
-- account to mail; no row when the address has an account already.
CREATE FUNCTION app.signup(user_email text, new_hash text, tenant uuid, token bytea, valid interval)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    member uuid;
BEGIN
    IF new_hash NOT LIKE '$argon2id$%' THEN
        RAISE EXCEPTION 'not an argon2id hash' USING ERRCODE = '22023';
    END IF;
    DELETE FROM app.signups s WHERE s.token_hash IN (
        SELECT o.token_hash FROM app.signups o
        WHERE o.expires_at < now() - interval '1 day' LIMIT 20);
    INSERT INTO app.users (email, password_hash) VALUES (btrim(user_email), 'unverified:' || new_hash)
    ON CONFLICT (lower(email)) DO UPDATE SET password_hash = EXCLUDED.password_hash
        WHERE app.users.password_hash LIKE 'unverified:%'
    RETURNING id INTO member;
    IF member IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO app.signups (token_hash, tenant, user_id, expires_at)
    VALUES (token, tenant, member, now() + valid);
    RETURN member;
END
$$;

-- The verification mail, in the context of the signup's tenant, to the
-- address of the pending link `token` only.
CREATE FUNCTION app.queue_signup_mail(token bytea, mail_subject text, mail_body text, mail_html text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    address text;
BEGIN
    SELECT u.email INTO address FROM app.signups s JOIN app.users u ON u.id = s.user_id
    WHERE s.token_hash = token AND s.used_at IS NULL AND s.expires_at > now()
      AND s.tenant = tenancy.current_tenant_id();
    IF address IS NULL THEN
        RAISE EXCEPTION 'no pending signup' USING ERRCODE = 'P0002';
    END IF;
    INSERT INTO app.email_outbox (recipient, template, subject, body, html)
    VALUES (address, 'signup_verification', mail_subject, mail_body, mail_html);
END
$$;

-- A pending link's address and the password hash chosen at signup: the
-- link is used with that password, so a stranger who signed up with
-- someone else's address cannot have them activate the stranger's password.
CREATE FUNCTION app.pending_signup(token bytea) RETURNS TABLE (email text, password_hash text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT u.email, substr(u.password_hash, length('unverified:') + 1)
    FROM app.signups s JOIN app.users u ON u.id = s.user_id
    WHERE s.token_hash = token AND s.used_at IS NULL AND s.expires_at > now()
      AND u.password_hash LIKE 'unverified:%';
$$;

-- Uses a verification link whose password was checked against
-- `checked_hash`: the account can log in from now on. Returns the tenant,
-- the account and its address; no row when the link is not valid
-- (unknown, used, expired, or the account's password changed since).
CREATE FUNCTION app.verify_signup(token bytea, checked_hash text)
RETURNS TABLE (tenant uuid, user_id uuid, email text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found app.signups;
BEGIN
    -- The tenant must still be active and accept signups.
    UPDATE app.signups s SET used_at = now()
    WHERE s.token_hash = token AND s.used_at IS NULL AND s.expires_at > now()
      AND EXISTS (SELECT 1 FROM app.users u
                  WHERE u.id = s.user_id AND u.password_hash = 'unverified:' || checked_hash)
      AND EXISTS (SELECT 1 FROM tenancy.tenants t
                  WHERE t.id = s.tenant AND t.status = 'active'
                    AND coalesce(t.configuration -> 'allow_public_signup' = 'true'::jsonb, false))
    RETURNING * INTO found;
    IF found.user_id IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    UPDATE app.users u SET password_hash = checked_hash
    WHERE u.id = found.user_id
    RETURNING found.tenant, u.id, u.email;
END
$$;

REVOKE EXECUTE ON FUNCTION
    app.signup_tenant(text),
    app.signup(text, text, uuid, bytea, interval),
    app.queue_signup_mail(bytea, text, text, text),
    app.pending_signup(bytea),
    app.verify_signup(bytea, text)
FROM PUBLIC;
