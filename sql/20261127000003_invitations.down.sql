CREATE OR REPLACE FUNCTION app.grant_membership(tenant uuid, user_email text) RETURNS uuid
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
DROP FUNCTION app.claim_account(text, text);
DROP FUNCTION app.queue_invitation_mail(uuid, text, text);
DROP TABLE app.invitations;
