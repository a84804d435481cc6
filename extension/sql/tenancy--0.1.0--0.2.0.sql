-- tenancy 0.1.0 -> 0.2.0: ALTER EXTENSION tenancy UPDATE TO '0.2.0'.
-- Frozen once 0.2.0 is released. What changed: tenancy.lint() (docs/LINT.md);
-- tenancy.current_tenant() and tenancy.lookup_tenant() in PL/pgSQL, whose
-- plans are kept per session (the SQL versions were planned on every call);
-- tenancy.mask_secrets(), which the catalog's audit trigger applies;
-- tenancy.protect() refuses Citus tables (tenancy.refuse_citus()).
-- tests/e2e/upgrade.rs checks that a database updated this way ends with
-- exactly what a fresh 0.2.0 install creates.

------------------------------------------------------------------------------
-- tenancy.lint(): what tenant isolation needs of a schema, checked across
-- the whole database. One row per finding: the rule, its severity (error:
-- rows of one tenant can reach another; warning: isolation holds but leaks
-- or costs; info: worth knowing), the object, a message, and the SQL that
-- fixes it (NULL where a person must decide). Rules are documented in
-- docs/LINT.md; `tenancy-server lint` prints them as text, JSON or SARIF.
--
-- Reads only the catalogs: any role may run it, and it sees what that role
-- may see of them.
------------------------------------------------------------------------------

CREATE FUNCTION tenancy.lint()
RETURNS TABLE (rule text, severity text, object text, message text, fix text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- TN001: a table with a tenant column that is not protected.
    RETURN QUERY
    SELECT 'TN001', 'error', c.oid::regclass::text,
           format('%s has the tenant column %I but is not protected: every role that can read it reads every tenant''s rows',
                  c.oid::regclass, a.attname),
           format('SELECT tenancy.protect(%L, %L);', c.oid::regclass::text, a.attname)
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    WHERE c.relkind IN ('r', 'p')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'tenancy', 'pg_toast')
      AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%'
      AND a.atttypid = 'uuid'::regtype AND NOT c.relispartition
      AND a.attname IN (SELECT 'tenant_id'::name UNION SELECT p.col FROM (SELECT pt.table_name::oid AS oid, pt.tenant_column AS col FROM tenancy.protected_tables pt WHERE pt.tenant_column IS NOT NULL) p)
      AND NOT EXISTS (SELECT 1 FROM (SELECT pt.table_name::oid AS oid, pt.tenant_column AS col FROM tenancy.protected_tables pt WHERE pt.tenant_column IS NOT NULL) p WHERE p.oid = c.oid)
      -- A partition or child of a protected table is TN010's.
      AND NOT EXISTS (SELECT 1 FROM pg_inherits i JOIN (SELECT pt.table_name::oid AS oid, pt.tenant_column AS col FROM tenancy.protected_tables pt WHERE pt.tenant_column IS NOT NULL) p ON p.oid = i.inhparent
                      WHERE i.inhrelid = c.oid);

    -- TN002: row-level security not enabled, or not forced, on a protected
    -- table; tenancy's own policies changed since protect() made them; a
    -- table with the policy but not the trigger that fills the tenant.
    RETURN QUERY
    SELECT 'TN002', 'error', c.oid::regclass::text,
           format('row-level security is %s on %s: %s',
                  CASE WHEN NOT c.relrowsecurity THEN 'not enabled' ELSE 'not forced' END, c.oid::regclass,
                  CASE WHEN NOT c.relrowsecurity THEN 'its policies do nothing'
                       ELSE 'the table''s owner reads every tenant''s rows' END),
           format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;', c.oid::regclass)
    FROM pg_class c JOIN (SELECT pt.table_name::oid AS oid FROM tenancy.protected_tables pt) p ON p.oid = c.oid
    WHERE NOT (c.relrowsecurity AND c.relforcerowsecurity);

    RETURN QUERY
    SELECT 'TN002', 'error', format('%I on %s', pol.polname, pol.polrelid::regclass),
           format('policy %I on %s is not what tenancy.protect() made: it no longer confines rows to the tenant context as written',
                  pol.polname, pol.polrelid::regclass),
           format('DROP POLICY %I ON %s; SELECT tenancy.protect(%L, %L);',
                  pol.polname, pol.polrelid::regclass, pol.polrelid::regclass::text, p.col)
    FROM pg_policy pol JOIN (SELECT pt.table_name::oid AS oid, pt.tenant_column AS col FROM tenancy.protected_tables pt WHERE pt.tenant_column IS NOT NULL) p ON p.oid = pol.polrelid
    WHERE (pol.polname = 'tenancy_isolation' AND NOT (
               pol.polcmd = '*' AND pol.polpermissive AND pol.polroles = '{0}'::oid[]
               AND pg_get_expr(pol.polqual, pol.polrelid)
                   = format('(%I = ( SELECT tenancy.current_tenant_id() AS current_tenant_id))', p.col)
               AND pg_get_expr(pol.polwithcheck, pol.polrelid)
                   = format('(%I = ( SELECT tenancy.current_tenant_id() AS current_tenant_id))', p.col)))
       OR (pol.polname = 'tenancy_bypass' AND NOT (
               pol.polcmd = '*' AND pol.polroles = ARRAY['tenancy_admin'::regrole::oid]
               AND pg_get_expr(pol.polqual, pol.polrelid) = '( SELECT tenancy.bypass_active() AS bypass_active)'
               AND pg_get_expr(pol.polwithcheck, pol.polrelid) = '( SELECT tenancy.bypass_active() AS bypass_active)'));

    RETURN QUERY
    SELECT 'TN002', 'error', pt.table_name::text,
           format('%s has tenancy''s policy but not its trigger: new rows are not filled or checked against the tenant context',
                  pt.table_name),
           NULL::text
    FROM tenancy.protected_tables pt WHERE pt.tenant_column IS NULL;

    -- TN003: another permissive policy on a protected table widens access
    -- (permissive policies are OR-ed with tenancy's): for every role when
    -- it applies to PUBLIC (error), for the roles it names (warning).
    RETURN QUERY
    SELECT 'TN003', CASE WHEN 0::oid = ANY (pol.polroles) THEN 'error' ELSE 'warning' END,
           format('%I on %s', pol.polname, pol.polrelid::regclass),
           format('policy %I on %s is permissive for %s: rows it allows are visible to %s whatever the tenant context',
                  pol.polname, pol.polrelid::regclass,
                  CASE WHEN 0::oid = ANY (pol.polroles) THEN 'every role'
                       ELSE (SELECT string_agg(quote_ident(pg_get_userbyid(r)), ', ' ORDER BY pg_get_userbyid(r))
                             FROM unnest(pol.polroles) r) END,
                  CASE WHEN 0::oid = ANY (pol.polroles) THEN 'anyone' ELSE 'them' END),
           format('DROP POLICY %I ON %s; -- then, if it is still needed: CREATE POLICY %I ON %s AS RESTRICTIVE ...',
                  pol.polname, pol.polrelid::regclass, pol.polname, pol.polrelid::regclass)
    FROM pg_policy pol JOIN (SELECT pt.table_name::oid AS oid, pt.tenant_column AS col FROM tenancy.protected_tables pt WHERE pt.tenant_column IS NOT NULL) p ON p.oid = pol.polrelid
    WHERE pol.polpermissive AND pol.polname NOT IN ('tenancy_isolation', 'tenancy_bypass');

    -- TN004: a foreign key between protected tables without the tenant column.
    RETURN QUERY
    SELECT 'TN004', 'error', format('%I on %s', k.conname, k.conrelid::regclass),
           format('foreign key %I from %s to %s does not pair the tenant columns: its check ignores row-level security, so a row of one tenant can reference a row of another',
                  k.conname, k.conrelid::regclass, k.confrelid::regclass),
           format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I FOREIGN KEY (%I, %s) REFERENCES %s (%I, %s);',
                  k.conrelid::regclass, k.conname, k.conname, ps.col,
                  (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY o.n)
                   FROM unnest(k.conkey) WITH ORDINALITY o(num, n)
                   JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = o.num),
                  k.confrelid::regclass, pd.col,
                  (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY o.n)
                   FROM unnest(k.confkey) WITH ORDINALITY o(num, n)
                   JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = o.num))
               || ' -- the referenced table needs a unique key on the same columns'
    FROM pg_constraint k
    JOIN (SELECT pt.table_name::oid AS oid, pt.tenant_column AS col FROM tenancy.protected_tables pt WHERE pt.tenant_column IS NOT NULL) ps ON ps.oid = k.conrelid
    JOIN (SELECT pt.table_name::oid AS oid, pt.tenant_column AS col FROM tenancy.protected_tables pt WHERE pt.tenant_column IS NOT NULL) pd ON pd.oid = k.confrelid
    WHERE k.contype = 'f' AND k.conparentid = 0
      AND NOT EXISTS (
          SELECT 1 FROM generate_subscripts(k.conkey, 1) g(i)
          JOIN pg_attribute sa ON sa.attrelid = k.conrelid AND sa.attnum = k.conkey[g.i]
          JOIN pg_attribute da ON da.attrelid = k.confrelid AND da.attnum = k.confkey[g.i]
          WHERE sa.attname = ps.col AND da.attname = pd.col);

    -- TN005: a unique constraint or unique index without the tenant column.
    RETURN QUERY
    SELECT 'TN005', 'error', i.indexrelid::regclass::text,
           format('unique index %s on %s does not include the tenant column %I: a duplicate in another tenant is reported to this one, revealing that the value exists',
                  i.indexrelid::regclass, i.indrelid::regclass, p.col),
           CASE WHEN k.conname IS NOT NULL THEN
               format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I UNIQUE (%I, %s);',
                      i.indrelid::regclass, k.conname, k.conname, p.col,
                      (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY o.n)
                       FROM unnest(i.indkey::int2[]) WITH ORDINALITY o(num, n)
                       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = o.num))
           -- A plain unique index on columns (no expressions, no predicate).
           WHEN i.indexprs IS NULL AND i.indpred IS NULL THEN
               format('DROP INDEX %s; CREATE UNIQUE INDEX %I ON %s (%I, %s);',
                      i.indexrelid::regclass, (SELECT c.relname FROM pg_class c WHERE c.oid = i.indexrelid),
                      i.indrelid::regclass, p.col,
                      (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY o.n)
                       FROM unnest(i.indkey::int2[]) WITH ORDINALITY o(num, n)
                       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = o.num))
           END
    FROM pg_index i
    JOIN (SELECT pt.table_name::oid AS oid, pt.tenant_column AS col FROM tenancy.protected_tables pt WHERE pt.tenant_column IS NOT NULL) p ON p.oid = i.indrelid
    JOIN pg_attribute ta ON ta.attrelid = i.indrelid AND ta.attname = p.col
    LEFT JOIN pg_constraint k ON k.conindid = i.indexrelid AND k.conrelid = i.indrelid AND k.contype IN ('p', 'u')
    WHERE i.indisunique AND NOT ta.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1])
      -- A partition's index is its parent's: reported once, there.
      AND NOT EXISTS (SELECT 1 FROM pg_inherits ii WHERE ii.inhrelid = i.indexrelid);

    -- TN006: no index leads with the tenant column.
    RETURN QUERY
    SELECT 'TN006', 'warning', c.oid::regclass::text,
           format('no index on %s leads with the tenant column %I: every query scans other tenants'' rows before the policy filters them',
                  c.oid::regclass, p.col),
           format('CREATE INDEX ON %s (%I);', c.oid::regclass, p.col)
    FROM pg_class c JOIN (SELECT pt.table_name::oid AS oid, pt.tenant_column AS col FROM tenancy.protected_tables pt WHERE pt.tenant_column IS NOT NULL) p ON p.oid = c.oid
    JOIN pg_attribute ta ON ta.attrelid = c.oid AND ta.attname = p.col
    WHERE NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indkey[0] = ta.attnum
                      AND i.indisvalid AND i.indpred IS NULL);

    -- TN007: a view over a protected table (directly or through other
    -- views) that runs as its owner, or a materialized view of one (a
    -- snapshot no policy applies to).
    RETURN QUERY
    WITH RECURSIVE reads(view_oid, base) AS (
        SELECT r.ev_class, d.refobjid
        FROM pg_rewrite r
        JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                        AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> r.ev_class
        UNION
        SELECT r.ev_class, reads.base
        FROM reads
        JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = reads.view_oid
                        AND d.classid = 'pg_rewrite'::regclass
        JOIN pg_rewrite r ON r.oid = d.objid AND r.ev_class <> reads.view_oid
    )
    SELECT DISTINCT 'TN007', 'error', v.oid::regclass::text,
           CASE WHEN v.relkind = 'm' THEN
               format('materialized view %s holds rows of the protected table %s, which no policy filters: whoever can read it reads every tenant''s',
                      v.oid::regclass, reads.base::regclass)
           ELSE
               format('view %s reads the protected table %s with its owner''s rights: the policies see the owner, not the caller',
                      v.oid::regclass, reads.base::regclass)
           END,
           CASE WHEN v.relkind = 'v' THEN format('ALTER VIEW %s SET (security_invoker = true);', v.oid::regclass) END
    FROM reads
    JOIN pg_class v ON v.oid = reads.view_oid
    JOIN (SELECT pt.table_name::oid AS oid, pt.tenant_column AS col FROM tenancy.protected_tables pt WHERE pt.tenant_column IS NOT NULL) p ON p.oid = reads.base
    WHERE v.relkind IN ('v', 'm')
      AND (v.relkind = 'm' OR NOT coalesce(
              (SELECT o.option_value::bool FROM pg_options_to_table(v.reloptions) o
               WHERE o.option_name = 'security_invoker'), false));

    -- TN008: SECURITY DEFINER functions that read protected tables, or whose
    -- search_path is not fixed (a caller's schema can capture its names).
    RETURN QUERY
    SELECT 'TN008', CASE WHEN reads THEN 'error' ELSE 'warning' END, f.oid::regprocedure::text,
           CASE WHEN reads THEN
               format('SECURITY DEFINER function %s names a protected table: it runs as %s, so the policies apply to its owner, not its caller',
                      f.oid::regprocedure, pg_get_userbyid(f.proowner))
           ELSE
               format('SECURITY DEFINER function %s has no fixed search_path: a schema its caller controls can capture the names it uses',
                      f.oid::regprocedure)
           END,
           CASE WHEN NOT fixed THEN format('ALTER ROUTINE %s SET search_path = pg_catalog, pg_temp;', f.oid::regprocedure)
                ELSE format('ALTER ROUTINE %s SECURITY INVOKER;', f.oid::regprocedure) END
    FROM (
        SELECT f.*,
               EXISTS (SELECT 1 FROM (SELECT pt.table_name::oid AS oid, pt.tenant_column AS col FROM tenancy.protected_tables pt WHERE pt.tenant_column IS NOT NULL) p JOIN pg_class c ON c.oid = p.oid
                       WHERE f.prosrc ~* ('\m' || regexp_replace(c.relname, '([^A-Za-z0-9_])', '\\\1', 'g') || '\M')) AS reads,
               EXISTS (SELECT 1 FROM unnest(f.proconfig) s WHERE s LIKE 'search_path=%') AS fixed
        FROM pg_proc f JOIN pg_namespace n ON n.oid = f.pronamespace
        WHERE f.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'tenancy')
    ) f
    WHERE reads OR NOT fixed;

    -- TN009: roles of this database's application (they hold privileges on
    -- a protected table) that bypass row-level security, or can become a
    -- role that does (SET ROLE). Superusers themselves are the DBA's.
    RETURN QUERY
    WITH bypass AS (
        SELECT r.oid, r.rolname, r.rolsuper FROM pg_roles r
        WHERE (r.rolbypassrls OR r.rolsuper) AND r.rolname NOT LIKE 'pg\_%'
    ), reaches AS (
        SELECT DISTINCT ro.oid FROM pg_roles ro, (SELECT pt.table_name::oid AS oid, pt.tenant_column AS col FROM tenancy.protected_tables pt WHERE pt.tenant_column IS NOT NULL) p
        WHERE has_table_privilege(ro.oid, p.oid, 'SELECT, INSERT, UPDATE, DELETE')
    )
    SELECT 'TN009', 'warning', b.rolname::text,
           format('role %I has BYPASSRLS and privileges on protected tables: it reads every tenant''s rows', b.rolname),
           format('ALTER ROLE %I NOBYPASSRLS;', b.rolname)
    FROM bypass b WHERE NOT b.rolsuper AND b.oid IN (SELECT r.oid FROM reaches r)
    UNION ALL
    SELECT 'TN009', 'error', m.rolname::text,
           format('role %I is a member of %I, which %s: it can SET ROLE and read every tenant''s rows',
                  m.rolname, b.rolname, CASE WHEN b.rolsuper THEN 'is a superuser' ELSE 'has BYPASSRLS' END),
           -- Revoke the memberships of the member through which it reaches the role.
           (SELECT string_agg(format('REVOKE %I FROM %I;', pg_get_userbyid(am.roleid), m.rolname), ' '
                              ORDER BY pg_get_userbyid(am.roleid))
            FROM pg_auth_members am
            WHERE am.member = m.oid AND pg_has_role(am.roleid, b.oid, 'MEMBER'))
    FROM bypass b
    JOIN pg_roles m ON m.oid <> b.oid AND pg_has_role(m.oid, b.oid, 'MEMBER')
    WHERE NOT (m.rolsuper OR m.rolbypassrls) AND m.oid IN (SELECT r.oid FROM reaches r);

    -- TN010: a partition or inheritance child of a protected table that is
    -- not protected itself (row-level security is per table).
    RETURN QUERY
    SELECT 'TN010', 'error', i.inhrelid::regclass::text,
           format('%s is a partition or child of the protected table %s but is not protected: read directly, it shows every tenant''s rows',
                  i.inhrelid::regclass, i.inhparent::regclass),
           format('SELECT tenancy.protect(%L, %L);', i.inhrelid::regclass::text, p.col)
    FROM pg_inherits i JOIN (SELECT pt.table_name::oid AS oid, pt.tenant_column AS col FROM tenancy.protected_tables pt WHERE pt.tenant_column IS NOT NULL) p ON p.oid = i.inhparent
    WHERE NOT EXISTS (SELECT 1 FROM (SELECT pt.table_name::oid AS oid, pt.tenant_column AS col FROM tenancy.protected_tables pt WHERE pt.tenant_column IS NOT NULL) c WHERE c.oid = i.inhrelid);

    -- TN011: privileges granted to PUBLIC on a protected table or on
    -- columns of one.
    RETURN QUERY
    SELECT 'TN011', 'warning', c.oid::regclass::text,
           format('%s grants %s to PUBLIC: every role, present and future, reaches it and depends on the policy alone',
                  c.oid::regclass, string_agg(DISTINCT g.privilege_type, ', ')),
           format('REVOKE ALL ON %s FROM PUBLIC;', c.oid::regclass)
    FROM pg_class c JOIN (SELECT pt.table_name::oid AS oid, pt.tenant_column AS col FROM tenancy.protected_tables pt WHERE pt.tenant_column IS NOT NULL) p ON p.oid = c.oid,
         aclexplode(c.relacl) g
    WHERE g.grantee = 0
    GROUP BY c.oid;

    RETURN QUERY
    SELECT 'TN011', 'warning', format('%s.%I', c.oid::regclass, a.attname),
           format('%s grants %s on column %I to PUBLIC: every role, present and future, reaches it and depends on the policy alone',
                  c.oid::regclass, string_agg(DISTINCT g.privilege_type, ', '), a.attname),
           string_agg(DISTINCT format('REVOKE %s (%I) ON %s FROM PUBLIC;', g.privilege_type, a.attname, c.oid::regclass), ' ')
    FROM pg_class c JOIN (SELECT pt.table_name::oid AS oid, pt.tenant_column AS col FROM tenancy.protected_tables pt WHERE pt.tenant_column IS NOT NULL) p ON p.oid = c.oid
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped,
         aclexplode(a.attacl) g
    WHERE g.grantee = 0
    GROUP BY c.oid, a.attname;

    -- TN012: a sequence shared by every tenant's rows: its values tell one
    -- tenant how many rows the others create.
    RETURN QUERY
    SELECT 'TN012', 'info', format('%s.%I', c.oid::regclass, a.attname),
           format('%s.%I takes its values from a sequence shared by every tenant: the gaps a tenant sees count the other tenants'' rows',
                  c.oid::regclass, a.attname),
           NULL::text
    FROM pg_class c JOIN (SELECT pt.table_name::oid AS oid, pt.tenant_column AS col FROM tenancy.protected_tables pt WHERE pt.tenant_column IS NOT NULL) p ON p.oid = c.oid
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    WHERE EXISTS (SELECT 1 FROM pg_depend d JOIN pg_class q ON q.oid = d.objid AND q.relkind = 'S'
                  WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                    AND d.refobjid = c.oid AND d.refobjsubid = a.attnum AND d.deptype IN ('a', 'i'))
      AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid);
END
$$;

GRANT EXECUTE ON FUNCTION tenancy.lint() TO PUBLIC;

------------------------------------------------------------------------------
-- The catalog lookups in PL/pgSQL (plans kept per session).
------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION tenancy.lookup_tenant(tenant uuid)
RETURNS TABLE (tenant_id uuid, slug text, status text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY SELECT t.id, t.slug, t.status FROM tenancy.tenants t WHERE t.id = tenant;
END
$$;

CREATE OR REPLACE FUNCTION tenancy.current_tenant()
RETURNS TABLE (id uuid, slug text, name text, display_name text, logo_url text,
               primary_color text, configuration jsonb, status text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
    SELECT t.id, t.slug, t.name, t.display_name, t.logo_url, t.primary_color, t.configuration, t.status
    FROM tenancy.tenants t WHERE t.id = tenancy.current_tenant_id();
END
$$;

-- Secrets in a tenant's configuration are masked in the audit log.
-- `doc` with secrets replaced by '****', at any depth: the value of every
-- key that names one (password, passwd, secret, token, credential, api key,
-- access key, private key, signing key, connection string anywhere in the
-- name; pw, pwd, key, auth, dsn as a word of it), and the password of any
-- URL (scheme://user:password@host). What the audit log keeps of a
-- tenant's configuration.
CREATE FUNCTION tenancy.mask_secrets(doc jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE jsonb_typeof(doc)
        WHEN 'object' THEN coalesce((
            SELECT jsonb_object_agg(e.key, CASE
                WHEN (e.key ~* '(pass(word|wd|phrase)|secret|token|credential|api_?-?key|access_?-?key|private_?-?key|signing_?-?key|connection_?-?string)'
                      OR e.key ~* '(^|[_.-])(pw|pwd|key|auth|dsn)([_.-]|$)'
                      OR e.key ~ '[a-z](Pw|Pwd|Key|Auth|Dsn)([A-Z_.-]|$)')
                     AND jsonb_typeof(e.value) <> 'null'
                THEN to_jsonb('****'::text)
                ELSE tenancy.mask_secrets(e.value) END)
            FROM jsonb_each(doc) e), '{}'::jsonb)
        WHEN 'array' THEN coalesce((
            SELECT jsonb_agg(tenancy.mask_secrets(a.value) ORDER BY a.n)
            FROM jsonb_array_elements(doc) WITH ORDINALITY a(value, n)), '[]'::jsonb)
        WHEN 'string' THEN to_jsonb(regexp_replace(doc #>> '{}',
            '^([a-zA-Z][a-zA-Z0-9+.-]*://[^/:@]*):[^/@]*@', '\1:****@'))
        ELSE doc
    END
$$;

CREATE OR REPLACE FUNCTION tenancy.on_catalog_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    subject jsonb;
    tenant  uuid;
BEGIN
    -- Never a key, and never a secret put in a tenant's configuration.
    subject := tenancy.mask_secrets(to_jsonb(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END) - 'key_material');
    tenant := CASE TG_TABLE_NAME
                  WHEN 'tenants' THEN (subject ->> 'id')::uuid
                  WHEN 'domains' THEN (subject ->> 'tenant_id')::uuid
              END;
    PERFORM tenancy.write_audit(TG_TABLE_NAME || '.' || lower(TG_OP), tenant, NULL, subject);
    PERFORM tenancy.invalidate_cache(TG_RELID);
    RETURN NULL;
END
$$;

-- Citus (scale-out) moves a table's rows into shards the policies and the
-- trigger of protect() do not reach, and turns a table with a foreign key
-- to a reference table into a "Citus local table" whose rows move the
-- same way: protecting such a table would look protected and not be.
-- Refused, with what to do, until tenancy distributes tables itself.
CREATE FUNCTION tenancy.refuse_citus(tbl regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    kind text;
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN;
    END IF;
    EXECUTE 'SELECT CASE WHEN partmethod = ''n'' AND repmodel = ''t'' THEN ''reference'' '
            'WHEN partmethod = ''n'' THEN ''Citus local'' ELSE ''distributed'' END '
            'FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1'
        INTO kind USING tbl;
    IF kind IS NOT NULL THEN
        RAISE EXCEPTION '% is a % table of Citus: its rows live in shards that tenancy.protect() cannot guard', tbl, kind
            USING ERRCODE = '0A000',
                  HINT = 'tenancy does not protect Citus tables yet. Undistribute it (undistribute_table) to protect it on this node.';
    END IF;
    EXECUTE 'SELECT 1 FROM pg_catalog.pg_dist_partition WHERE logicalrelid = ''tenancy.tenants''::regclass'
        INTO kind;
    IF kind IS NOT NULL THEN
        RAISE EXCEPTION 'the tenancy catalog is a Citus table: a table protected now would become a Citus local table whose rows tenancy.protect() cannot guard'
            USING ERRCODE = '0A000',
                  HINT = 'tenancy does not run on a Citus catalog yet: undistribute_table(''tenancy.tenants'').';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION tenancy.protect(tbl regclass, tenant_column name DEFAULT 'tenant_id') RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel        record;
    att        record;
    existing   text;
    using_expr text;
    child      regclass;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'a table is required' USING ERRCODE = '22023';
    END IF;
    SELECT c.relkind, c.relname, n.nspname, c.relispartition INTO rel
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation with oid % does not exist', tbl::oid USING ERRCODE = '42P01';
    END IF;
    IF rel.relkind = 'f' THEN
        -- A foreign table partition keeps its rows elsewhere: RLS here cannot guard them.
        RAISE EXCEPTION '% is a foreign table and cannot be protected', tbl
            USING ERRCODE = '42809',
                  HINT = 'Protect the table on the server that holds the rows, or detach it.';
    END IF;
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = '42809';
    END IF;
    IF rel.nspname = 'tenancy' THEN
        RAISE EXCEPTION 'the tenancy catalog cannot be protected' USING ERRCODE = '42809';
    END IF;
    IF NOT pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = tbl), 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table %', tbl USING ERRCODE = '42501';
    END IF;
    PERFORM tenancy.refuse_citus(tbl);

    SELECT a.attnum, a.atttypid, a.attnotnull, a.atthasdef INTO att
    FROM pg_attribute a
    WHERE a.attrelid = tbl AND a.attname = tenant_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of table % does not exist', tenant_column, tbl USING ERRCODE = '42703';
    END IF;
    IF att.atttypid <> 'uuid'::regtype THEN
        RAISE EXCEPTION 'column "%" of table % must be of type uuid, not %',
            tenant_column, tbl, format_type(att.atttypid, NULL) USING ERRCODE = '42804';
    END IF;

    SELECT split_part(encode(t.tgargs, 'escape'), '\000', 1) INTO existing
    FROM pg_trigger t WHERE t.tgrelid = tbl AND t.tgname = '0_tenancy_fill_tenant_id';
    IF existing IS NOT NULL AND existing <> tenant_column THEN
        RAISE EXCEPTION 'table % is already protected on column "%"', tbl, existing
            USING ERRCODE = '55000', HINT = 'Call tenancy.unprotect() first.';
    END IF;

    IF NOT att.attnotnull THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', tbl, tenant_column);
    END IF;
    -- The column default fills the tenant before a partitioned table routes
    -- the row (BEFORE triggers run only in the chosen partition).
    IF NOT att.atthasdef THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT tenancy.current_tenant_id()',
                       tbl, tenant_column);
    END IF;

    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint k
        WHERE k.conrelid = tbl AND k.contype = 'f'
          AND k.confrelid = 'tenancy.tenants'::regclass AND k.conkey = ARRAY[att.attnum]
    ) THEN
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I FOREIGN KEY (%I) REFERENCES tenancy.tenants (id)',
                       tbl, left(rel.relname || '_' || tenant_column || '_tenant_fkey', 63), tenant_column);
    END IF;

    -- The foreign key may have made it a Citus table (see refuse_citus).
    PERFORM tenancy.refuse_citus(tbl);

    IF NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = tbl AND i.indkey[0] = att.attnum) THEN
        EXECUTE format('CREATE INDEX %I ON %s (%I)',
                       left(rel.relname || '_' || tenant_column || '_idx', 63), tbl, tenant_column);
    END IF;

    -- Checked again here: the event trigger may have protected this table
    -- already, in reaction to the DDL above (a child of a protected parent).
    IF NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = tbl AND t.tgname = '0_tenancy_fill_tenant_id') THEN
        EXECUTE format('CREATE TRIGGER "0_tenancy_fill_tenant_id" BEFORE INSERT OR UPDATE OF %I ON %s
                        FOR EACH ROW EXECUTE FUNCTION tenancy.fill_tenant_id(%L)',
                       tenant_column, tbl, tenant_column);
    END IF;

    IF NOT (SELECT c.relrowsecurity FROM pg_class c WHERE c.oid = tbl) THEN
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    END IF;
    IF NOT (SELECT c.relforcerowsecurity FROM pg_class c WHERE c.oid = tbl) THEN
        EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
    END IF;

    -- The (SELECT ...) form is evaluated once per statement as an InitPlan and
    -- keeps the tenant index usable; see BENCHMARKS.md.
    using_expr := format('%I = (SELECT tenancy.current_tenant_id())', tenant_column);
    IF NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = tbl AND p.polname = 'tenancy_isolation') THEN
        EXECUTE format('CREATE POLICY tenancy_isolation ON %s AS PERMISSIVE FOR ALL TO PUBLIC
                        USING (%s) WITH CHECK (%s)', tbl, using_expr, using_expr);
    END IF;
    -- The bypass is a separate policy for tenancy_admin only, so the
    -- application role's plans never see it.
    IF NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = tbl AND p.polname = 'tenancy_bypass') THEN
        EXECUTE format('CREATE POLICY tenancy_bypass ON %s AS PERMISSIVE FOR ALL TO tenancy_admin
                        USING ((SELECT tenancy.bypass_active())) WITH CHECK ((SELECT tenancy.bypass_active()))', tbl);
    END IF;

    -- Row-level security is per table: a partition or an inheritance child
    -- read directly would show every tenant's rows. Each is protected too
    -- (and new ones as they are created or attached: tenancy.on_ddl).
    FOR child IN SELECT i.inhrelid::regclass FROM pg_inherits i WHERE i.inhparent = tbl ORDER BY i.inhrelid LOOP
        PERFORM tenancy.protect(child, tenant_column);
    END LOOP;

    PERFORM tenancy.check_protected_schema(tbl);
END
$$;
