DROP FUNCTION app.queue_invitation_mail(uuid, text, text, text);
CREATE FUNCTION app.queue_invitation_mail(invitation uuid, mail_subject text, mail_body text)
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
    INSERT INTO app.email_outbox (recipient, template, subject, body)
    VALUES (recipient, 'invitation', mail_subject, mail_body);
END
$$;

DROP FUNCTION app.mail_due(integer);
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
REVOKE EXECUTE ON FUNCTION app.mail_due(integer) FROM PUBLIC;

DELETE FROM app.email_templates WHERE locale <> '';
ALTER TABLE app.email_templates DROP CONSTRAINT email_templates_pkey;
ALTER TABLE app.email_templates ADD PRIMARY KEY (tenant_id, key);
ALTER TABLE app.email_templates DROP COLUMN locale;
