-- Going back needs every address in plain: the database cannot open a
-- sealed one, so this refuses while any invitation holds one.
DO $$
BEGIN
    -- Across tenants (the key custodian may read every invitation).
    PERFORM set_config('app.cross_tenant', 'key_custodian', true);
    IF EXISTS (SELECT 1 FROM app.invitations WHERE email IS NULL) THEN
        RAISE EXCEPTION 'invitations hold sealed addresses; they cannot be unsealed in SQL';
    END IF;
    CREATE TEMPORARY TABLE invitation_addresses ON COMMIT DROP AS
        SELECT i.tenant_id, i.id, i.email FROM app.invitations i;
    PERFORM set_config('app.cross_tenant', '', true);
END
$$;

DROP POLICY unconfined_key_custodian ON app.invitations;

CREATE OR REPLACE FUNCTION app.destroy_retired_keys(tenant uuid) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    PERFORM set_config('app.cross_tenant', 'key_custodian', true);
    PERFORM 1 FROM app.tenant_keys k
    WHERE k.tenant_id = tenant AND k.retired_at IS NOT NULL AND k.wrapped IS NOT NULL FOR UPDATE;
    UPDATE app.tenant_keys k SET wrapped = NULL, destroyed_at = now()
    WHERE k.tenant_id = tenant AND k.retired_at IS NOT NULL AND k.wrapped IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM app.tenant_integrations i
                      WHERE i.tenant_id = tenant AND i.key_version = k.version);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('app.cross_tenant', '', true);
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION app.rekey_due(batch integer) RETURNS SETOF uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('app.cross_tenant', 'key_custodian', true);
    RETURN QUERY SELECT i.tenant_id FROM app.tenant_integrations i
    JOIN app.tenant_keys k ON k.tenant_id = i.tenant_id AND k.version = i.key_version
    JOIN tenancy.tenants t ON t.id = i.tenant_id
    WHERE k.retired_at IS NOT NULL AND k.wrapped IS NOT NULL AND t.status = 'active'
    GROUP BY i.tenant_id ORDER BY min(k.retired_at) LIMIT batch;
    PERFORM set_config('app.cross_tenant', '', true);
END
$$;

DROP VIEW app.sealed_values;

DROP FUNCTION app.invitation_addresses(uuid, uuid[]);
DROP FUNCTION app.mail_claim(integer, interval, uuid[]);
CREATE FUNCTION app.mail_claim(batch integer, lease interval, busy uuid[])
RETURNS TABLE (tenant_id uuid, id bigint, template text, recipient text, subject text, body text, html text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('app.cross_tenant', 'mail_sender', true);
    RETURN QUERY
    UPDATE app.email_outbox o SET next_attempt_at = now() + lease
    WHERE (o.tenant_id, o.id) IN (
        SELECT x.tenant_id, x.id FROM app.email_outbox x
        WHERE x.sent_at IS NULL AND x.next_attempt_at <= now() AND x.tenant_id <> ALL (busy)
        ORDER BY x.next_attempt_at, x.id LIMIT batch FOR UPDATE SKIP LOCKED)
    RETURNING o.tenant_id, o.id, o.template, o.recipient, o.subject, o.body, o.html;
    PERFORM set_config('app.cross_tenant', '', true);
END
$$;
REVOKE EXECUTE ON FUNCTION app.mail_claim(integer, interval, uuid[]) FROM PUBLIC;

CREATE OR REPLACE FUNCTION app.queue_invitation_mail(invitation uuid, mail_subject text, mail_body text,
                                                     mail_html text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    recipient text;
BEGIN
    SELECT i.email INTO recipient FROM app.invitations i
    WHERE i.tenant_id = tenancy.current_tenant_id() AND i.id = invitation
      AND i.accepted_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > now();
    IF recipient IS NULL THEN
        RAISE EXCEPTION 'no pending invitation %', invitation USING ERRCODE = 'P0002';
    END IF;
    INSERT INTO app.email_outbox (recipient, template, subject, body, html)
    VALUES (recipient, 'invitation', mail_subject, mail_body, mail_html);
END
$$;
-- (Every invitation is in plain here: the guard above.)
SELECT set_config('app.cross_tenant', 'mail_sender', true);
UPDATE app.email_outbox o SET recipient = i.email
FROM pg_temp.invitation_addresses i
WHERE i.tenant_id = o.tenant_id AND i.id = o.invitation_id AND o.recipient IS NULL;
SELECT set_config('app.cross_tenant', '', true);
ALTER TABLE app.email_outbox
    DROP CONSTRAINT email_outbox_addressed,
    DROP COLUMN invitation_id,
    ALTER COLUMN recipient SET NOT NULL;

DROP TRIGGER invitations_sealed_only ON app.invitations;
DROP FUNCTION app.invitations_sealed_only();

DROP INDEX app.invitations_email_index_idx;
ALTER TABLE app.invitations
    DROP CONSTRAINT invitations_key_fk,
    DROP CONSTRAINT invitations_email_one_form,
    DROP COLUMN key_version,
    DROP COLUMN email_index,
    DROP COLUMN email_sealed,
    ALTER COLUMN email SET NOT NULL;
