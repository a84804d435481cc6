DROP FUNCTION app.mail_attempted(uuid, bigint, boolean, text);
DROP FUNCTION app.mail_due(integer);
DROP POLICY unconfined_mail_sender ON app.email_outbox;
ALTER TABLE app.email_outbox NO FORCE ROW LEVEL SECURITY;

DROP FUNCTION app.relay_purge(interval);
DROP FUNCTION app.relay_published(bigint[], uuid[], text[]);
DROP FUNCTION app.relay_pending(bigint);
ALTER POLICY message_outbox_own_user ON app.message_outbox
    USING ((SELECT tenancy.bypass_active()) OR user_id = (SELECT tenancy.current_user_id()))
    WITH CHECK ((SELECT tenancy.bypass_active()) OR user_id = (SELECT tenancy.current_user_id()));
DROP POLICY unconfined_outbox_relay ON app.message_outbox;
ALTER TABLE app.message_outbox NO FORCE ROW LEVEL SECURITY;

CREATE OR REPLACE FUNCTION app.user_tenants(member uuid)
RETURNS TABLE (tenant_id uuid, slug text, name text, role text, status text, default_workspace_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.tenant_id, t.slug, t.name, m.role, t.status, m.default_workspace_id
    FROM app.tenant_memberships m JOIN tenancy.tenants t ON t.id = m.tenant_id
    WHERE m.user_id = member;
$$;
REVOKE EXECUTE ON FUNCTION app.user_tenants(uuid) FROM PUBLIC;
DROP POLICY unconfined_credential_lookup ON app.tenant_memberships;
ALTER TABLE app.tenant_memberships NO FORCE ROW LEVEL SECURITY;

CREATE OR REPLACE FUNCTION app.check_single_tenant() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (SELECT single_tenant_users FROM app.settings) THEN
        PERFORM 1 FROM app.users u WHERE u.id = NEW.user_id FOR NO KEY UPDATE;
        IF EXISTS (SELECT 1 FROM app.tenant_memberships m
                   WHERE m.user_id = NEW.user_id AND m.tenant_id <> NEW.tenant_id) THEN
            RAISE EXCEPTION 'user % already belongs to another tenant', NEW.user_id
                USING ERRCODE = '23505', HINT = 'This deployment allows one tenant per user.';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER tenant_memberships_grant ON app.tenant_memberships;
DROP FUNCTION app.check_membership_grant();
DROP FUNCTION app.consume_membership_grant(uuid, uuid);
DROP FUNCTION app.grant_membership(uuid, text);
DROP TABLE app.membership_grants;
DROP FUNCTION app.cross_tenant(text);
