DROP TABLE app.tenant_signups;
