//! tenancy on a real Citus 13 cluster (a coordinator and two workers on this
//! machine, `tenancy_tests::citus`). Until tenancy distributes tables
//! itself, every way a DBA can take a protected table through Citus must
//! fail closed: a table that looks protected with its rows in shards no
//! policy guards is the failure these tests look for. Grouped by attacker:
//! here the DBA, following the README's path or forcing Citus' hand.

use sqlx::PgConnection;
use tenancy_tests::citus::Cluster;
use tenancy_tests::{db_error, TestResult};

const NOTES: &str =
    "CREATE TABLE notes (tenant_id uuid NOT NULL, id bigint NOT NULL, body text, PRIMARY KEY (tenant_id, id))";

/// The SQLSTATE and message `sql` fails with.
async fn refused(conn: &mut PgConnection, sql: &str) -> (String, String) {
    db_error(sqlx::query(sql).execute(conn).await)
}

/// Whether `notes` is still protected on the coordinator (policy, FORCE,
/// trigger) and not a Citus table.
async fn still_protected(conn: &mut PgConnection) -> TestResult<(bool, bool)> {
    let protected: bool = sqlx::query_scalar(
        "SELECT c.relforcerowsecurity AND c.relrowsecurity
                AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'tenancy_isolation')
                AND EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = '0_tenancy_fill_tenant_id')
         FROM pg_class c WHERE c.oid = 'notes'::regclass",
    )
    .fetch_one(&mut *conn)
    .await?;
    let citus: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'notes'::regclass)",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok((protected, citus))
}

mod dba {
    use super::*;

    #[tokio::test]
    async fn distributes_a_table_it_protected_as_the_readme_says() -> TestResult {
        let cluster = Cluster::new().await?;
        let mut c = cluster.coordinator().await?;
        sqlx::query(NOTES).execute(&mut c).await?;
        sqlx::query("SELECT tenancy.protect('notes')")
            .execute(&mut c)
            .await?;
        let (_, message) = refused(
            &mut c,
            "SELECT create_distributed_table('notes', 'tenant_id')",
        )
        .await;
        assert!(message.contains("triggers"), "{message}");
        // Forcing Citus past the trigger: the catalog it references stops it.
        sqlx::query("SET citus.enable_unsafe_triggers = on")
            .execute(&mut c)
            .await?;
        let (_, message) = refused(
            &mut c,
            "SELECT create_distributed_table('notes', 'tenant_id')",
        )
        .await;
        assert!(
            message.contains("reference table") || message.contains("distributed table"),
            "{message}"
        );
        assert_eq!(still_protected(&mut c).await?, (true, false));
        cluster.drop().await
    }

    #[tokio::test]
    async fn hands_a_protected_table_to_citus_by_other_ways() -> TestResult {
        let cluster = Cluster::new().await?;
        let mut c = cluster.coordinator().await?;
        for statement in [
            "CREATE TABLE kinds (id int PRIMARY KEY)",
            "SELECT create_reference_table('kinds')",
            NOTES,
            "ALTER TABLE notes ADD COLUMN kind int",
            "SELECT tenancy.protect('notes')",
        ] {
            sqlx::query(statement).execute(&mut c).await?;
        }
        // A foreign key to a reference table converts a table into a Citus
        // local table, and so does adding it to Citus' metadata: both are
        // refused by Citus for the policy protect() made.
        for statement in [
            "ALTER TABLE notes ADD FOREIGN KEY (kind) REFERENCES kinds (id)",
            "SELECT citus_add_local_table_to_metadata('notes')",
            "SELECT create_reference_table('notes')",
        ] {
            let (_, message) = refused(&mut c, statement).await;
            assert!(
                message.contains("policy") || message.contains("trigger"),
                "{statement}: {message}"
            );
        }
        assert_eq!(still_protected(&mut c).await?, (true, false));
        cluster.drop().await
    }

    #[tokio::test]
    async fn protects_a_table_citus_already_distributed() -> TestResult {
        let cluster = Cluster::new().await?;
        let mut c = cluster.coordinator().await?;
        sqlx::query(NOTES).execute(&mut c).await?;
        sqlx::query("SELECT create_distributed_table('notes', 'tenant_id')")
            .execute(&mut c)
            .await?;
        let (code, message) = refused(&mut c, "SELECT tenancy.protect('notes')").await;
        assert_eq!(code, "0A000", "{message}");
        assert!(
            message.contains("notes is a distributed table of Citus"),
            "{message}"
        );
        let policies: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_policy WHERE polrelid = 'notes'::regclass")
                .fetch_one(&mut c)
                .await?;
        assert_eq!(policies, 0, "nothing half-done that would look protected");
        let listed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tenancy.protected_tables WHERE table_name = 'notes'::regclass",
        )
        .fetch_one(&mut c)
        .await?;
        assert_eq!(listed, 0);
        cluster.drop().await
    }

    #[tokio::test]
    async fn makes_the_catalog_a_reference_table_then_protects_and_distributes() -> TestResult {
        let cluster = Cluster::new().await?;
        let mut c = cluster.coordinator().await?;
        // The catalog forced into reference tables, as a DBA might.
        for statement in [
            "SET citus.enable_unsafe_triggers = on",
            "ALTER TABLE tenancy.domains DROP CONSTRAINT domains_tenant_id_fkey",
            "SELECT create_reference_table('tenancy.tenants')",
        ] {
            sqlx::query(statement).execute(&mut c).await?;
        }
        sqlx::query(NOTES).execute(&mut c).await?;
        // Its foreign key to the catalog would make notes a Citus local
        // table, which distribution then strips of its policies.
        let (code, message) = refused(&mut c, "SELECT tenancy.protect('notes')").await;
        assert_eq!(code, "0A000", "{message}");
        assert!(message.contains("catalog is a Citus table"), "{message}");
        let citus: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'notes'::regclass)",
        )
        .fetch_one(&mut c)
        .await?;
        assert!(!citus, "notes was not converted");
        sqlx::query("SELECT create_distributed_table('notes', 'tenant_id')")
            .execute(&mut c)
            .await?;
        let listed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tenancy.protected_tables WHERE table_name = 'notes'::regclass",
        )
        .fetch_one(&mut c)
        .await?;
        assert_eq!(listed, 0, "never reported as protected");
        cluster.drop().await
    }
}
