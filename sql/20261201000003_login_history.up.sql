-- Each account's own history of logins and failed logins (address, user
-- agent, time), which its owner reads: a failed login they did not make is
-- how they learn someone tries their password. The latest 200 successes
-- and the latest 200 failures are kept per account. Owner-only, reached through the functions below.

CREATE TABLE app.login_events (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    uuid        NOT NULL REFERENCES app.users (id) ON DELETE CASCADE,
    at         timestamptz NOT NULL DEFAULT now(),
    succeeded  boolean     NOT NULL,
    address    text        NOT NULL DEFAULT '',
    user_agent text        NOT NULL DEFAULT ''
);
CREATE INDEX login_events_user_idx ON app.login_events (user_id, id);

-- Records a login attempt on the account of `login_email`, if there is one.
CREATE FUNCTION app.record_login(login_email text, succeeded boolean, from_address text, agent text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    member uuid;
BEGIN
    SELECT u.id INTO member FROM app.users u WHERE lower(u.email) = lower(btrim(login_email));
    IF member IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO app.login_events (user_id, succeeded, address, user_agent)
    VALUES (member, succeeded, left(coalesce(from_address, ''), 64), left(coalesce(agent, ''), 256));
    -- Successes and failures are kept apart, so a flood of failed logins
    -- cannot push a successful one out of the history.
    DELETE FROM app.login_events e WHERE e.user_id = member AND e.succeeded = record_login.succeeded
      AND e.id <= (SELECT o.id FROM app.login_events o
                   WHERE o.user_id = member AND o.succeeded = record_login.succeeded
                   ORDER BY o.id DESC OFFSET 200 LIMIT 1);
END
$$;

-- An account's latest login attempts, newest first.
CREATE FUNCTION app.login_history(member uuid, max_rows integer)
RETURNS TABLE (at timestamptz, succeeded boolean, address text, user_agent text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT e.at, e.succeeded, e.address, e.user_agent FROM app.login_events e
    WHERE e.user_id = member ORDER BY e.id DESC LIMIT least(greatest(max_rows, 1), 400);
$$;

REVOKE EXECUTE ON FUNCTION
    app.record_login(text, boolean, text, text),
    app.login_history(uuid, integer)
FROM PUBLIC;
