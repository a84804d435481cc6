-- Sessions and passwords.
--
-- A login opens a session: a short access token (revocable at once through
-- Redis) and a refresh token that is exchanged for the next one on every
-- use. Sessions live here, not in Redis, so a Redis restart loses none: an
-- access token it forgot is refused, and the client refreshes. A refresh
-- token presented twice means it was copied: the whole session (the family
-- of tokens it rotated through) is revoked.
--
-- Passwords change (the current one required), reset through a mailed
-- single-use link, and are rehashed when the hashing parameters change.
-- Every table here is the owner's; the credential role (DATABASE_AUTH_URL,
-- default the owner) reaches them through the functions below only, and the
-- application role not at all.

-- Mail gets an HTML part beside its text (the mails below carry one).
ALTER TABLE app.email_outbox ADD COLUMN html text CHECK (length(html) <= 200000);

CREATE TABLE app.sessions (
    id              uuid        PRIMARY KEY,
    user_id         uuid        NOT NULL REFERENCES app.users (id) ON DELETE CASCADE,
    -- The tenant the session's tokens are for (NULL: none selected).
    selected_tenant uuid,
    refresh_hash    bytea       NOT NULL UNIQUE CHECK (length(refresh_hash) = 32),
    -- Unused this long, the session ends (the tenant's session timeout).
    idle_timeout    interval    NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    refreshed_at    timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    revoked_reason  text,
    user_agent      text        NOT NULL DEFAULT '',
    address         text        NOT NULL DEFAULT ''
);
CREATE INDEX sessions_user_idx ON app.sessions (user_id);

-- Refresh tokens already exchanged. Presenting one again is reuse.
CREATE TABLE app.spent_refresh_tokens (
    token_hash bytea       PRIMARY KEY CHECK (length(token_hash) = 32),
    session_id uuid        NOT NULL REFERENCES app.sessions (id) ON DELETE CASCADE,
    spent_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX spent_refresh_tokens_session_idx ON app.spent_refresh_tokens (session_id);

-- Password reset links (their SHA-256). A request for an address without
-- an account is recorded too (user_id NULL): the same work either way.
CREATE TABLE app.password_resets (
    token_hash bytea       PRIMARY KEY CHECK (length(token_hash) = 32),
    user_id    uuid        REFERENCES app.users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX password_resets_user_idx ON app.password_resets (user_id, created_at);
CREATE INDEX password_resets_expires_idx ON app.password_resets (expires_at);

------------------------------------------------------------------------------
-- Sessions
------------------------------------------------------------------------------

-- The idle timeout of sessions for a tenant: its session_timeout_minutes
-- (5 to 10080, default 60); 60 minutes without a tenant.
CREATE FUNCTION app.session_timeout(tenant uuid) RETURNS interval
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT make_interval(mins => coalesce(
        (SELECT CASE WHEN jsonb_typeof(t.configuration -> 'session_timeout_minutes') = 'number'
                     THEN least(greatest((t.configuration ->> 'session_timeout_minutes')::numeric, 5), 10080)::integer
                END
         FROM tenancy.tenants t WHERE t.id = tenant),
        60));
$$;

-- Opens a session. Sessions of the user that ended a day ago are removed.
CREATE FUNCTION app.session_start(session uuid, member uuid, tenant uuid, refresh bytea,
                                  lifetime interval, agent text, from_address text)
RETURNS interval
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    idle interval := app.session_timeout(tenant);
BEGIN
    DELETE FROM app.sessions s WHERE s.user_id = member
        AND (s.revoked_at < now() - interval '1 day' OR s.expires_at < now() - interval '1 day'
             OR s.refreshed_at + s.idle_timeout < now() - interval '1 day');
    INSERT INTO app.sessions (id, user_id, selected_tenant, refresh_hash, idle_timeout,
                              expires_at, user_agent, address)
    VALUES (session, member, tenant, refresh, idle, now() + lifetime,
            left(coalesce(agent, ''), 256), left(coalesce(from_address, ''), 64));
    RETURN idle;
END
$$;

-- Exchanges a refresh token for `next`. outcome: 'rotated' (the session,
-- its user, tenant and idle timeout), 'reused' (a token already exchanged:
-- its session is revoked), 'invalid' (unknown, expired, revoked).
CREATE FUNCTION app.session_refresh(presented bytea, next bytea)
RETURNS TABLE (outcome text, session_id uuid, user_id uuid, email text, is_super_admin boolean,
               selected_tenant uuid, idle_timeout interval)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s app.sessions;
    spent uuid;
BEGIN
    SELECT * INTO s FROM app.sessions x WHERE x.refresh_hash = presented FOR UPDATE;
    IF FOUND THEN
        IF s.revoked_at IS NOT NULL OR s.expires_at <= now()
           OR s.refreshed_at + s.idle_timeout <= now() THEN
            RETURN QUERY SELECT 'invalid'::text, NULL::uuid, NULL::uuid, NULL::text, NULL::boolean,
                                NULL::uuid, NULL::interval;
            RETURN;
        END IF;
        -- The idle timeout follows the tenant's configuration as it is now.
        s.idle_timeout := app.session_timeout(s.selected_tenant);
        INSERT INTO app.spent_refresh_tokens (token_hash, session_id) VALUES (presented, s.id);
        UPDATE app.sessions x SET refresh_hash = next, refreshed_at = now(),
            idle_timeout = s.idle_timeout
        WHERE x.id = s.id;
        RETURN QUERY SELECT 'rotated'::text, s.id, s.user_id, u.email, u.is_super_admin,
                            s.selected_tenant, s.idle_timeout
                     FROM app.users u WHERE u.id = s.user_id;
        RETURN;
    END IF;
    SELECT t.session_id INTO spent FROM app.spent_refresh_tokens t WHERE t.token_hash = presented;
    IF FOUND THEN
        UPDATE app.sessions x SET revoked_at = now(), revoked_reason = 'refresh token reused'
        WHERE x.id = spent AND x.revoked_at IS NULL;
        RETURN QUERY SELECT 'reused'::text, spent, NULL::uuid, NULL::text, NULL::boolean,
                            NULL::uuid, NULL::interval;
        RETURN;
    END IF;
    RETURN QUERY SELECT 'invalid'::text, NULL::uuid, NULL::uuid, NULL::text, NULL::boolean,
                        NULL::uuid, NULL::interval;
END
$$;

-- The tenant a live session's next tokens are for; its idle timeout
-- follows. NULL when the session has ended (revoked, expired, idle too long,
-- removed): then it issues nothing more.
CREATE FUNCTION app.session_select_tenant(session uuid, member uuid, tenant uuid) RETURNS interval
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE app.sessions s SET selected_tenant = tenant, idle_timeout = app.session_timeout(tenant)
    WHERE s.id = session AND s.user_id = member AND s.revoked_at IS NULL
      AND s.expires_at > now() AND s.refreshed_at + s.idle_timeout > now()
    RETURNING s.idle_timeout;
$$;

-- A user's sessions that are still usable.
CREATE FUNCTION app.session_list(member uuid)
RETURNS TABLE (id uuid, selected_tenant uuid, created_at timestamptz, refreshed_at timestamptz,
               idle_expires_at timestamptz, expires_at timestamptz, user_agent text, address text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.id, s.selected_tenant, s.created_at, s.refreshed_at,
           least(s.refreshed_at + s.idle_timeout, s.expires_at), s.expires_at, s.user_agent, s.address
    FROM app.sessions s
    WHERE s.user_id = member AND s.revoked_at IS NULL AND s.expires_at > now()
      AND s.refreshed_at + s.idle_timeout > now()
    ORDER BY s.created_at DESC;
$$;

-- Revokes a user's sessions: `session` alone, or (NULL) all but `keep`.
-- Returns the sessions revoked.
CREATE FUNCTION app.session_revoke(member uuid, session uuid, keep uuid, reason text)
RETURNS SETOF uuid
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE app.sessions s SET revoked_at = now(), revoked_reason = reason
    WHERE s.user_id = member AND s.revoked_at IS NULL
      AND (session IS NULL OR s.id = session)
      AND (keep IS NULL OR s.id <> keep)
    RETURNING s.id;
$$;

------------------------------------------------------------------------------
-- Passwords
------------------------------------------------------------------------------

-- A user's password hash, by id.
CREATE FUNCTION app.password_of(member uuid) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT u.password_hash FROM app.users u WHERE u.id = member;
$$;

-- Sets a user's password and revokes every session of the user but
-- `keep`; returns the sessions revoked.
CREATE FUNCTION app.set_password(member uuid, new_hash text, keep uuid) RETURNS SETOF uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF new_hash NOT LIKE '$argon2id$%' THEN
        RAISE EXCEPTION 'not an argon2id hash' USING ERRCODE = '22023';
    END IF;
    UPDATE app.users u SET password_hash = new_hash WHERE u.id = member;
    -- Reset links sent before stop working.
    UPDATE app.password_resets r SET used_at = now() WHERE r.user_id = member AND r.used_at IS NULL;
    RETURN QUERY SELECT app.session_revoke(member, NULL, keep, 'password changed');
END
$$;

-- The same password hashed with new parameters: replaces `old_hash` unless
-- the password changed meanwhile.
CREATE FUNCTION app.rehash_password(member uuid, old_hash text, new_hash text) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH changed AS (
        UPDATE app.users u SET password_hash = new_hash
        WHERE u.id = member AND u.password_hash = old_hash AND new_hash LIKE '$argon2id$%'
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM changed);
$$;

-- A reset request. The link's digest is recorded whatever the address.
-- Returns a row (the account, its address, and the tenant in whose name
-- the mail goes) only when a mail is to be sent: to an account that has an
-- active tenant, at most once a minute per account.
CREATE FUNCTION app.request_password_reset(user_email text, token bytea, valid interval)
RETURNS TABLE (user_id uuid, recipient text, tenant_id uuid)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    member uuid;
    address text;
    tenant uuid;
BEGIN
    SELECT u.id, u.email INTO member, address FROM app.users u
    WHERE lower(u.email) = lower(btrim(user_email));
    IF member IS NOT NULL AND EXISTS (
        SELECT 1 FROM app.password_resets r
        WHERE r.user_id = member AND r.created_at > now() - interval '1 minute') THEN
        member := NULL;
    END IF;
    -- Links that ended a day ago go, a few at a time.
    DELETE FROM app.password_resets r WHERE r.token_hash IN (
        SELECT o.token_hash FROM app.password_resets o
        WHERE o.expires_at < now() - interval '1 day' LIMIT 20);
    INSERT INTO app.password_resets (token_hash, user_id, expires_at)
    VALUES (token, member, now() + valid);
    IF member IS NULL THEN
        RETURN;
    END IF;
    SELECT t.tenant_id INTO tenant FROM app.user_tenants(member) t
    WHERE t.status = 'active' ORDER BY t.slug LIMIT 1;
    IF tenant IS NOT NULL THEN
        RETURN QUERY SELECT member, address, tenant;
    END IF;
END
$$;

-- The reset mail, in the context of the tenant it is sent in the name of,
-- to the address of the pending link `token` only: this function cannot
-- mail anyone else.
CREATE FUNCTION app.queue_password_reset_mail(token bytea, mail_subject text, mail_body text, mail_html text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    address text;
BEGIN
    SELECT u.email INTO address FROM app.password_resets r JOIN app.users u ON u.id = r.user_id
    WHERE r.token_hash = token AND r.used_at IS NULL AND r.expires_at > now();
    IF address IS NULL THEN
        RAISE EXCEPTION 'no pending reset link' USING ERRCODE = 'P0002';
    END IF;
    INSERT INTO app.email_outbox (recipient, template, subject, body, html)
    VALUES (address, 'password_reset', mail_subject, mail_body, mail_html);
END
$$;

-- The address a reset link is for, while the link is valid.
CREATE FUNCTION app.password_reset_email(token bytea) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT u.email FROM app.password_resets r JOIN app.users u ON u.id = r.user_id
    WHERE r.token_hash = token AND r.used_at IS NULL AND r.expires_at > now();
$$;

-- Uses a reset link: sets the password and revokes every session. Returns
-- the user and the sessions revoked; no row when the link is not valid.
CREATE FUNCTION app.reset_password(token bytea, new_hash text)
RETURNS TABLE (user_id uuid, revoked uuid[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    member uuid;
BEGIN
    UPDATE app.password_resets r SET used_at = now()
    WHERE r.token_hash = token AND r.used_at IS NULL AND r.expires_at > now()
      AND r.user_id IS NOT NULL
    RETURNING r.user_id INTO member;
    IF member IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT member, array(SELECT app.set_password(member, new_hash, NULL));
END
$$;

REVOKE EXECUTE ON FUNCTION
    app.session_timeout(uuid),
    app.session_start(uuid, uuid, uuid, bytea, interval, text, text),
    app.session_refresh(bytea, bytea),
    app.session_select_tenant(uuid, uuid, uuid),
    app.session_list(uuid),
    app.session_revoke(uuid, uuid, uuid, text),
    app.password_of(uuid),
    app.set_password(uuid, text, uuid),
    app.rehash_password(uuid, text, text),
    app.request_password_reset(text, bytea, interval),
    app.queue_password_reset_mail(bytea, text, text, text),
    app.password_reset_email(bytea),
    app.reset_password(bytea, text)
FROM PUBLIC;
