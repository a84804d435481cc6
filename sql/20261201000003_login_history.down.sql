DROP FUNCTION app.login_history(uuid, integer);
DROP FUNCTION app.record_login(text, boolean, text, text);
DROP TABLE app.login_events;
