-- Tenant data exports (seed 002, REQ-MT-B008). An owner or admin asks for
-- one; a job of the service builds it through the requester's own signed
-- context (so no other tenant's row can be in it), stores the archive in
-- chunks here, and mails the requester a link that works a few times and
-- expires. One export per tenant runs at a time.

CREATE TABLE app.exports (
    tenant_id      uuid        NOT NULL,
    id             uuid        NOT NULL DEFAULT gen_random_uuid(),
    requested_by   uuid        NOT NULL,
    format         text        NOT NULL CHECK (format IN ('json', 'csv')),
    status         text        NOT NULL DEFAULT 'queued'
                               CHECK (status IN ('queued', 'running', 'done', 'failed')),
    tables_total   integer     NOT NULL DEFAULT 0,
    tables_done    integer     NOT NULL DEFAULT 0,
    rows_done      bigint      NOT NULL DEFAULT 0,
    bytes          bigint      NOT NULL DEFAULT 0,
    failure        text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    heartbeat_at   timestamptz,
    finished_at    timestamptz,
    -- The download link's secret (SHA-256), set when the archive is ready.
    token_hash     bytea       CHECK (length(token_hash) = 32),
    expires_at     timestamptz,
    downloads      integer     NOT NULL DEFAULT 0,
    max_downloads  integer     NOT NULL DEFAULT 3 CHECK (max_downloads > 0),
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX exports_one_running ON app.exports (tenant_id) WHERE status IN ('queued', 'running');
CREATE UNIQUE INDEX exports_token ON app.exports (tenant_id, token_hash);
SELECT tenancy.protect('app.exports');

CREATE TABLE app.export_chunks (
    tenant_id uuid    NOT NULL,
    export_id uuid    NOT NULL,
    seq       integer NOT NULL CHECK (seq >= 0),
    data      bytea   NOT NULL,
    PRIMARY KEY (tenant_id, export_id, seq),
    FOREIGN KEY (tenant_id, export_id) REFERENCES app.exports (tenant_id, id) ON DELETE CASCADE
);
SELECT tenancy.protect('app.export_chunks');

-- The job's claim: the oldest queued export, or a running one whose job
-- stopped beating (a crash, a restart), marked running for this job.
CREATE FUNCTION app.export_claim(stale interval)
RETURNS TABLE (tenant_id uuid, id uuid, requested_by uuid, format text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('app.cross_tenant', 'export_job', true);
    RETURN QUERY
    UPDATE app.exports e SET status = 'running', started_at = now(), heartbeat_at = now(),
        tables_done = 0, rows_done = 0, bytes = 0
    WHERE (e.tenant_id, e.id) = (
        SELECT x.tenant_id, x.id FROM app.exports x
        WHERE x.status = 'queued' OR (x.status = 'running' AND x.heartbeat_at < now() - stale)
        ORDER BY x.created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING e.tenant_id, e.id, e.requested_by, e.format;
    PERFORM set_config('app.cross_tenant', '', true);
END
$$;

-- A download: the export a link's secret names, if it is ready, not
-- expired and not used up; counts the download.
CREATE FUNCTION app.export_download(token bytea)
RETURNS TABLE (tenant_id uuid, id uuid, format text, downloads integer)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('app.cross_tenant', 'export_job', true);
    RETURN QUERY
    UPDATE app.exports e SET downloads = e.downloads + 1
    WHERE e.token_hash = token AND e.status = 'done' AND e.expires_at > now()
      AND e.downloads < e.max_downloads
    RETURNING e.tenant_id, e.id, e.format, e.downloads;
    PERFORM set_config('app.cross_tenant', '', true);
END
$$;

-- Archives past their link's expiry go (the export's record stays).
CREATE FUNCTION app.export_purge() RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    gone bigint;
BEGIN
    PERFORM set_config('app.cross_tenant', 'export_job', true);
    DELETE FROM app.export_chunks c USING app.exports e
    WHERE e.tenant_id = c.tenant_id AND e.id = c.export_id AND e.expires_at < now();
    GET DIAGNOSTICS gone = ROW_COUNT;
    PERFORM set_config('app.cross_tenant', '', true);
    RETURN gone;
END
$$;

-- The export mail, to the requester's own address only.
CREATE FUNCTION app.queue_export_mail(token bytea, mail_subject text, mail_body text, mail_html text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    recipient text;
BEGIN
    SELECT u.email INTO recipient FROM app.exports e JOIN app.users u ON u.id = e.requested_by
    WHERE e.tenant_id = tenancy.current_tenant_id() AND e.token_hash = token AND e.status = 'done';
    IF recipient IS NULL THEN
        RAISE EXCEPTION 'no finished export for this link' USING ERRCODE = 'P0002';
    END IF;
    INSERT INTO app.email_outbox (recipient, template, subject, body, html)
    VALUES (recipient, 'data_export', mail_subject, mail_body, mail_html);
END
$$;

DO $do$
BEGIN
    EXECUTE format($p$
        CREATE POLICY unconfined_export_job ON app.exports FOR ALL TO %I
            USING ((SELECT app.cross_tenant('export_job')))
            WITH CHECK ((SELECT app.cross_tenant('export_job')))
    $p$, current_user);
    EXECUTE format($p$
        CREATE POLICY unconfined_export_job ON app.export_chunks FOR ALL TO %I
            USING ((SELECT app.cross_tenant('export_job')))
            WITH CHECK ((SELECT app.cross_tenant('export_job')))
    $p$, current_user);
END
$do$;

REVOKE EXECUTE ON FUNCTION app.export_claim(interval), app.export_download(bytea), app.export_purge()
    FROM PUBLIC;
