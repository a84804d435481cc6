-- The membership path and the owner role's code paths.
--
-- 1. A membership is created only against a grant the credential role
--    issued (app.grant_membership, called by the service after it has
--    authorized the change): the application role can neither add a user
--    of its choosing to its tenant (and so see that user's account through
--    users_visible) nor move a membership onto another user.
-- 2. tenant_memberships, message_outbox and email_outbox are FORCEd: code
--    running as the owner is confined to the context like the application
--    role. The few reads across tenants the service needs are named
--    functions below, each opening a policy for the owner role for as long
--    as it runs (app.cross_tenant).
-- 3. With one tenant per user, an existing account is never added
--    directly, whichever tenant it belongs to, and the refusal does not say
--    why: it cannot tell a tenant's admin who belongs elsewhere.

-- Whether the running code is one of the owner role's cross-tenant
-- functions (each sets app.cross_tenant for its own statement and clears it
-- before it returns) and the role is the owner. Any role may set the
-- setting; only the owner gains anything by it.
DO $do$
BEGIN
    EXECUTE format($f$
        CREATE FUNCTION app.cross_tenant(purpose text) RETURNS boolean
        LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $b$
            SELECT coalesce(current_setting('app.cross_tenant', true) = purpose, false)
                   AND pg_has_role(current_user, %L, 'USAGE')
        $b$
    $f$, current_user);
END
$do$;

------------------------------------------------------------------------------
-- 1. Memberships against grants
------------------------------------------------------------------------------

-- Issued by the credential role, consumed by the membership insert, valid
-- for minutes. Only the owner reads or writes it (RLS on, no policy).
CREATE TABLE app.membership_grants (
    tenant_id  uuid        NOT NULL REFERENCES tenancy.tenants (id) ON DELETE CASCADE,
    user_id    uuid        NOT NULL REFERENCES app.users (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL DEFAULT now() + interval '5 minutes',
    PRIMARY KEY (tenant_id, user_id)
);
ALTER TABLE app.membership_grants ENABLE ROW LEVEL SECURITY;

-- The account for this email (created as an invited account when new) and
-- a grant to add it to `tenant`. With one tenant per user, an existing
-- account is refused whatever its memberships, in the words every refusal
-- of this kind uses.
CREATE FUNCTION app.grant_membership(tenant uuid, user_email text) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    member uuid;
BEGIN
    IF (SELECT single_tenant_users FROM app.settings)
       AND EXISTS (SELECT 1 FROM app.users u WHERE lower(u.email) = lower(btrim(user_email))) THEN
        RAISE EXCEPTION 'This account cannot be added to this tenant'
            USING ERRCODE = '23505', HINT = 'This deployment allows one tenant per user.';
    END IF;
    member := app.ensure_user(user_email);
    DELETE FROM app.membership_grants g WHERE g.expires_at < now();
    INSERT INTO app.membership_grants (tenant_id, user_id) VALUES (tenant, member)
    ON CONFLICT (tenant_id, user_id) DO UPDATE SET expires_at = EXCLUDED.expires_at;
    RETURN member;
END
$$;
REVOKE EXECUTE ON FUNCTION app.grant_membership(uuid, text) FROM PUBLIC;

-- Consumes the grant for (tenant, member) in the current tenant's context.
CREATE FUNCTION app.consume_membership_grant(tenant uuid, member uuid) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH used AS (
        DELETE FROM app.membership_grants g
        WHERE g.tenant_id = tenant AND g.user_id = member AND g.expires_at >= now()
          AND tenant = tenancy.current_tenant_id()
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM used);
$$;

-- Runs as the inserting role: the owner (provisioning, the command line)
-- adds members itself; every other role needs a grant.
CREATE FUNCTION app.check_membership_grant() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID), 'USAGE') THEN
        RETURN NEW;
    END IF;
    IF NOT app.consume_membership_grant(NEW.tenant_id, NEW.user_id) THEN
        RAISE EXCEPTION 'permission denied: a membership needs a grant from the credential role'
            USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER tenant_memberships_grant BEFORE INSERT OR UPDATE OF user_id, tenant_id
    ON app.tenant_memberships FOR EACH ROW EXECUTE FUNCTION app.check_membership_grant();

CREATE OR REPLACE FUNCTION app.check_single_tenant() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    elsewhere boolean;
BEGIN
    IF (SELECT single_tenant_users FROM app.settings) THEN
        -- Serialises memberships of one user; the application role may not
        -- lock rows of app.users.
        PERFORM 1 FROM app.users u WHERE u.id = NEW.user_id FOR NO KEY UPDATE;
        PERFORM set_config('app.cross_tenant', 'credential_lookup', true);
        elsewhere := EXISTS (SELECT 1 FROM app.tenant_memberships m
                             WHERE m.user_id = NEW.user_id AND m.tenant_id <> NEW.tenant_id);
        PERFORM set_config('app.cross_tenant', '', true);
        IF elsewhere THEN
            RAISE EXCEPTION 'This account cannot be added to this tenant'
                USING ERRCODE = '23505', HINT = 'This deployment allows one tenant per user.';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

------------------------------------------------------------------------------
-- 2. The owner role confined to the context, with named exceptions
------------------------------------------------------------------------------
--
-- The setting is set with set_config(..., true) around the one statement
-- and cleared after it: a SET clause on the function would need a superuser
-- for a custom setting. An error in between aborts the transaction anyway.
--
-- The exception policies are named to sort after tenancy_isolation:
-- PostgreSQL ORs a table's permissive policies in descending name order and
-- evaluates the context (an InitPlan) only when an earlier arm is false, so
-- these functions need no context, and code outside them still fails
-- without one. Were the order ever different, they would fail (no context),
-- not open: the tests run the login, relay and mail paths.

-- The policies are for the owner role alone (TO <owner>), like
-- tenancy_bypass is for tenancy_admin: the application role's plans never
-- carry them, so its queries keep their tenant index conditions.
ALTER TABLE app.tenant_memberships FORCE ROW LEVEL SECURITY;
DO $do$
BEGIN
    EXECUTE format($p$
        CREATE POLICY unconfined_credential_lookup ON app.tenant_memberships FOR SELECT TO %I
            USING ((SELECT app.cross_tenant('credential_lookup')))
    $p$, current_user);
END
$do$;

-- A user's tenants with their role and the tenant's status (login).
CREATE OR REPLACE FUNCTION app.user_tenants(member uuid)
RETURNS TABLE (tenant_id uuid, slug text, name text, role text, status text, default_workspace_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('app.cross_tenant', 'credential_lookup', true);
    RETURN QUERY
    SELECT m.tenant_id, t.slug, t.name, m.role, t.status, m.default_workspace_id
    FROM app.tenant_memberships m JOIN tenancy.tenants t ON t.id = m.tenant_id
    WHERE m.user_id = member;
    PERFORM set_config('app.cross_tenant', '', true);
END
$$;

ALTER TABLE app.message_outbox FORCE ROW LEVEL SECURITY;
DO $do$
BEGIN
    EXECUTE format($p$
        CREATE POLICY unconfined_outbox_relay ON app.message_outbox FOR ALL TO %I
            USING ((SELECT app.cross_tenant('outbox_relay')))
            WITH CHECK ((SELECT app.cross_tenant('outbox_relay')))
    $p$, current_user);
END
$do$;
-- The per-user restriction holds for everyone but the relay.
ALTER POLICY message_outbox_own_user ON app.message_outbox
    USING ((SELECT app.cross_tenant('outbox_relay')) OR (SELECT tenancy.bypass_active())
           OR user_id = (SELECT tenancy.current_user_id()))
    WITH CHECK ((SELECT app.cross_tenant('outbox_relay')) OR (SELECT tenancy.bypass_active())
                OR user_id = (SELECT tenancy.current_user_id()));

-- The relay's three statements.
CREATE FUNCTION app.relay_pending(batch bigint)
RETURNS TABLE (id bigint, tenant_id uuid, message_id uuid, session_id uuid, user_id uuid,
               content text, message_created_at timestamptz)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('app.cross_tenant', 'outbox_relay', true);
    RETURN QUERY
    SELECT o.id, o.tenant_id, o.message_id, o.session_id, o.user_id, o.content, o.message_created_at
    FROM app.message_outbox o WHERE o.published_at IS NULL ORDER BY o.id LIMIT batch;
    PERFORM set_config('app.cross_tenant', '', true);
END
$$;
CREATE FUNCTION app.relay_published(ids bigint[], tenants uuid[], stream_ids text[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('app.cross_tenant', 'outbox_relay', true);
    UPDATE app.message_outbox o SET published_at = now(), stream_id = p.stream_id
    FROM unnest(ids, tenants, stream_ids) AS p(id, tenant_id, stream_id)
    WHERE o.tenant_id = p.tenant_id AND o.id = p.id;
    PERFORM set_config('app.cross_tenant', '', true);
END
$$;
CREATE FUNCTION app.relay_purge(keep interval) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    gone bigint;
BEGIN
    PERFORM set_config('app.cross_tenant', 'outbox_relay', true);
    DELETE FROM app.message_outbox o
    WHERE o.published_at IS NOT NULL AND o.published_at < now() - keep;
    GET DIAGNOSTICS gone = ROW_COUNT;
    PERFORM set_config('app.cross_tenant', '', true);
    RETURN gone;
END
$$;

ALTER TABLE app.email_outbox FORCE ROW LEVEL SECURITY;
DO $do$
BEGIN
    EXECUTE format($p$
        CREATE POLICY unconfined_mail_sender ON app.email_outbox FOR ALL TO %I
            USING ((SELECT app.cross_tenant('mail_sender')))
            WITH CHECK ((SELECT app.cross_tenant('mail_sender')))
    $p$, current_user);
END
$do$;

-- The mail sender's two statements: mail that is due (locked for this
-- transaction) and the outcome of one delivery.
CREATE FUNCTION app.mail_due(batch integer)
RETURNS TABLE (tenant_id uuid, id bigint, recipient text, subject text, body text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('app.cross_tenant', 'mail_sender', true);
    RETURN QUERY
    SELECT o.tenant_id, o.id, o.recipient, o.subject, o.body FROM app.email_outbox o
    WHERE o.sent_at IS NULL AND o.next_attempt_at <= now()
    ORDER BY o.next_attempt_at, o.id LIMIT batch FOR UPDATE SKIP LOCKED;
    PERFORM set_config('app.cross_tenant', '', true);
END
$$;
CREATE FUNCTION app.mail_attempted(tenant uuid, mail bigint, sent boolean, failure text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('app.cross_tenant', 'mail_sender', true);
    UPDATE app.email_outbox o SET attempts = o.attempts + 1,
        sent_at = CASE WHEN sent THEN now() END, last_error = failure,
        next_attempt_at = now() + make_interval(secs => least(power(2, o.attempts), 3600))
    WHERE o.tenant_id = tenant AND o.id = mail;
    PERFORM set_config('app.cross_tenant', '', true);
END
$$;

REVOKE EXECUTE ON FUNCTION app.relay_pending(bigint), app.relay_published(bigint[], uuid[], text[]),
    app.relay_purge(interval), app.mail_due(integer), app.mail_attempted(uuid, bigint, boolean, text)
    FROM PUBLIC;
