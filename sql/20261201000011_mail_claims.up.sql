-- The mail sender claims a batch (a lease on each row) of tenants it is
-- not already sending for (`busy`), commits, and sends outside any
-- transaction, recording each outcome in a statement of its own: a slow
-- mail server, a tenant's own among them, holds no lock and no transaction
-- open and holds up no other tenant, and a delivery that succeeded is
-- never rolled back into being sent again. A sender that dies mid-batch
-- leaves its rows to be retried once their lease ends.
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
