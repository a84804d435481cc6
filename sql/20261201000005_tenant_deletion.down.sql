DROP TABLE app.tenant_deletions;
