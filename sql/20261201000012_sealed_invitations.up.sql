-- Invitees' addresses sealed with the tenant's data key (seed 002,
-- REQ-MT-B009). An invitation is kept after it is accepted or revoked, and
-- its address is personal data of someone who may never have become a
-- member: the service seals it (`email_sealed`, under data key
-- `key_version`) and keeps a keyed blind index beside it (`email_index`,
-- an HMAC of the normalised address under a key derived from the same data
-- key) for the one equality lookup it needs: a new invitation replaces a
-- pending one for the same address. The database can compare indexes; it
-- cannot read an address or test a guess without the tenant's key.
--
-- Rows written before this migration keep their plain `email` until the
-- service's key job seals them; a row holds one form or the other.

ALTER TABLE app.invitations
    ALTER COLUMN email DROP NOT NULL,
    ADD COLUMN email_sealed bytea CHECK (length(email_sealed) <= 1024),
    ADD COLUMN email_index  bytea CHECK (length(email_index) = 16),
    ADD COLUMN key_version  integer,
    ADD CONSTRAINT invitations_email_one_form CHECK (
        (email IS NOT NULL AND email_sealed IS NULL AND email_index IS NULL AND key_version IS NULL)
        OR (email IS NULL AND email_sealed IS NOT NULL AND email_index IS NOT NULL AND key_version IS NOT NULL)),
    ADD CONSTRAINT invitations_key_fk FOREIGN KEY (tenant_id, key_version)
        REFERENCES app.tenant_keys (tenant_id, version);
CREATE INDEX invitations_email_index_idx ON app.invitations (tenant_id, email_index)
    WHERE accepted_at IS NULL AND revoked_at IS NULL;

-- Only sealed addresses are written: a plain one (which the key job would
-- then seal and index) would let whoever writes rows test guesses against
-- the blind index. Rows from before sealing keep theirs until sealed.
CREATE FUNCTION app.invitations_sealed_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.email IS NOT NULL AND (TG_OP = 'INSERT' OR NEW.email IS DISTINCT FROM OLD.email) THEN
        RAISE EXCEPTION 'invitation addresses are stored sealed only' USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER invitations_sealed_only BEFORE INSERT OR UPDATE OF email ON app.invitations
    FOR EACH ROW EXECUTE FUNCTION app.invitations_sealed_only();

-- The invitation mail names its invitation, not the address: the outbox
-- holds no plain copy of it, and the mail sender opens the sealed address
-- when it sends. The function still mails only the invitation's own
-- address, of a pending invitation of the tenant of the context.
ALTER TABLE app.email_outbox
    ALTER COLUMN recipient DROP NOT NULL,
    ADD COLUMN invitation_id uuid,
    ADD CONSTRAINT email_outbox_addressed CHECK (recipient IS NOT NULL OR invitation_id IS NOT NULL);
CREATE OR REPLACE FUNCTION app.queue_invitation_mail(invitation uuid, mail_subject text, mail_body text,
                                                     mail_html text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM 1 FROM app.invitations i
    WHERE i.tenant_id = tenancy.current_tenant_id() AND i.id = invitation
      AND i.accepted_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > now();
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no pending invitation %', invitation USING ERRCODE = 'P0002';
    END IF;
    INSERT INTO app.email_outbox (invitation_id, template, subject, body, html)
    VALUES (invitation, 'invitation', mail_subject, mail_body, mail_html);
END
$$;

-- The claim hands the sender each mail's invitation too.
DROP FUNCTION app.mail_claim(integer, interval, uuid[]);
CREATE FUNCTION app.mail_claim(batch integer, lease interval, busy uuid[])
RETURNS TABLE (tenant_id uuid, id bigint, template text, recipient text, subject text, body text,
               html text, invitation_id uuid)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('app.cross_tenant', 'mail_sender', true);
    RETURN QUERY
    UPDATE app.email_outbox o SET next_attempt_at = now() + lease
    WHERE (o.tenant_id, o.id) IN (
        SELECT x.tenant_id, x.id FROM app.email_outbox x
        WHERE x.sent_at IS NULL AND x.next_attempt_at <= now() AND x.tenant_id <> ALL (busy)
        ORDER BY x.next_attempt_at, x.id LIMIT batch FOR UPDATE SKIP LOCKED)
    RETURNING o.tenant_id, o.id, o.template, o.recipient, o.subject, o.body, o.html, o.invitation_id;
    PERFORM set_config('app.cross_tenant', '', true);
END
$$;
REVOKE EXECUTE ON FUNCTION app.mail_claim(integer, interval, uuid[]) FROM PUBLIC;

-- What the mail sender needs to open invitations' addresses: the sealed
-- value, what it is bound to, and the tenant key that sealed it (wrapped);
-- invitations of `tenant` only (the tenant of the mail).
CREATE FUNCTION app.invitation_addresses(tenant uuid, ids uuid[])
RETURNS TABLE (id uuid, tenant_id uuid, email text, email_sealed bytea, token_hash bytea,
               key_version integer, kek_id text, wrapped bytea)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('app.cross_tenant', 'key_custodian', true);
    RETURN QUERY SELECT i.id, i.tenant_id, i.email, i.email_sealed, i.token_hash, i.key_version,
                        k.kek_id, k.wrapped
    FROM app.invitations i
    LEFT JOIN app.tenant_keys k ON k.tenant_id = i.tenant_id AND k.version = i.key_version
    WHERE i.tenant_id = tenant AND i.id = ANY (ids);
    PERFORM set_config('app.cross_tenant', '', true);
END
$$;
REVOKE EXECUTE ON FUNCTION app.invitation_addresses(uuid, uuid[]) FROM PUBLIC;

-- Every sealed value's tenant and key version, whatever table holds it:
-- what rotation reseals and what keeps a retired key alive.
CREATE VIEW app.sealed_values WITH (security_invoker = true) AS
    SELECT i.tenant_id, i.key_version FROM app.tenant_integrations i
    UNION ALL
    SELECT v.tenant_id, v.key_version FROM app.invitations v WHERE v.key_version IS NOT NULL;
REVOKE ALL ON app.sealed_values FROM PUBLIC;

-- Tenants with values to reseal: sealed under a retired key, or written in
-- plain before their column was sealed.
CREATE OR REPLACE FUNCTION app.rekey_due(batch integer) RETURNS SETOF uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('app.cross_tenant', 'key_custodian', true);
    RETURN QUERY
    SELECT due.tenant_id FROM (
        SELECT s.tenant_id, min(k.retired_at) AS since FROM app.sealed_values s
        JOIN app.tenant_keys k ON k.tenant_id = s.tenant_id AND k.version = s.key_version
        WHERE k.retired_at IS NOT NULL AND k.wrapped IS NOT NULL
        GROUP BY s.tenant_id
        UNION ALL
        SELECT v.tenant_id, min(v.created_at) FROM app.invitations v
        WHERE v.email IS NOT NULL GROUP BY v.tenant_id
    ) due
    JOIN tenancy.tenants t ON t.id = due.tenant_id
    WHERE t.status = 'active'
    GROUP BY due.tenant_id ORDER BY min(due.since) LIMIT batch;
    PERFORM set_config('app.cross_tenant', '', true);
END
$$;

CREATE OR REPLACE FUNCTION app.destroy_retired_keys(tenant uuid) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    PERFORM set_config('app.cross_tenant', 'key_custodian', true);
    -- Locked first: a write sealing under one of these keys holds it FOR
    -- KEY SHARE (its foreign key) until it commits, and the check below, a
    -- statement of its own, then sees what it wrote.
    PERFORM 1 FROM app.tenant_keys k
    WHERE k.tenant_id = tenant AND k.retired_at IS NOT NULL AND k.wrapped IS NOT NULL FOR UPDATE;
    UPDATE app.tenant_keys k SET wrapped = NULL, destroyed_at = now()
    WHERE k.tenant_id = tenant AND k.retired_at IS NOT NULL AND k.wrapped IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM app.sealed_values s
                      WHERE s.tenant_id = tenant AND s.key_version = k.version);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('app.cross_tenant', '', true);
    RETURN n;
END
$$;
REVOKE EXECUTE ON FUNCTION app.rekey_due(integer), app.destroy_retired_keys(uuid) FROM PUBLIC;

-- The key custodian (rotation, destruction of retired keys) sees which key
-- version sealed each invitation, across tenants.
DO $do$
BEGIN
    EXECUTE format($p$
        CREATE POLICY unconfined_key_custodian ON app.invitations FOR SELECT TO %I
            USING ((SELECT app.cross_tenant('key_custodian')))
    $p$, current_user);
END
$do$;
