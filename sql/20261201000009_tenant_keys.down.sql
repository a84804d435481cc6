DROP FUNCTION app.destroy_retired_keys(uuid);
DROP FUNCTION app.rekey_due(integer);
DROP FUNCTION app.mail_integrations(uuid[]);
DROP FUNCTION app.shred_tenant_keys(uuid);
DROP FUNCTION app.rewrap_data_key(uuid, integer, text, bytea);
DROP FUNCTION app.data_keys_to_rewrap(text, integer);
DROP FUNCTION app.data_key_wrappers();
DROP TABLE app.tenant_integrations;
DROP TABLE app.tenant_keys;
