-- Invitations with consent. A tenant's admin invites an address with a
-- role; the person accepts with the single-use link from their mail: a new
-- address chooses a password, an existing account confirms with its own.
-- Only then does the membership exist (against a grant of the credential
-- role, like every membership). The link's secret is stored only as its
-- SHA-256, and the inviter's answer is the same whether or not the address
-- has an account.

CREATE TABLE app.invitations (
    tenant_id   uuid        NOT NULL,
    id          uuid        NOT NULL DEFAULT gen_random_uuid(),
    email       text        NOT NULL CHECK (email ~ '^[^@\s]+@[^@\s]+$' AND length(email) <= 254),
    role        text        NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    token_hash  bytea       NOT NULL CHECK (length(token_hash) = 32),
    invited_by  uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    accepted_at timestamptz,
    accepted_by uuid,
    revoked_at  timestamptz,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, token_hash)
);
CREATE INDEX invitations_email_idx ON app.invitations (tenant_id, lower(email))
    WHERE accepted_at IS NULL AND revoked_at IS NULL;
SELECT tenancy.protect('app.invitations');

-- The invitation mail, to the invitation's own address only: the
-- application role cannot write mail, and this function cannot be used to
-- mail anyone else.
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

-- An account for this address that has no password yet (new, or invited
-- before) gets `new_hash`; returns its id. NULL when the account already
-- has a password: then the person proves it instead.
CREATE FUNCTION app.claim_account(user_email text, new_hash text) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    member uuid;
BEGIN
    member := app.ensure_user(user_email);
    UPDATE app.users SET password_hash = new_hash
    WHERE id = member AND password_hash NOT LIKE '$argon2%';
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN member;
END
$$;
REVOKE EXECUTE ON FUNCTION app.claim_account(text, text) FROM PUBLIC;

-- Grants are issued when an invitation is accepted, by the person it was
-- for: with one tenant per user, the trigger on memberships refuses a
-- second tenant, and only the invitee hears why.
CREATE OR REPLACE FUNCTION app.grant_membership(tenant uuid, user_email text) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    member uuid;
BEGIN
    member := app.ensure_user(user_email);
    DELETE FROM app.membership_grants g WHERE g.expires_at < now();
    INSERT INTO app.membership_grants (tenant_id, user_id) VALUES (tenant, member)
    ON CONFLICT (tenant_id, user_id) DO UPDATE SET expires_at = EXCLUDED.expires_at;
    RETURN member;
END
$$;
