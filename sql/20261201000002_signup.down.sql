DROP FUNCTION app.verify_signup(bytea, text);
DROP FUNCTION app.pending_signup(bytea);
DROP FUNCTION app.queue_signup_mail(bytea, text, text, text);
DROP FUNCTION app.signup(text, text, uuid, bytea, interval);
DROP FUNCTION app.signup_tenant(text);
DROP TABLE app.signups;
