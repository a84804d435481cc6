DROP FUNCTION app.mail_claim(integer, interval, uuid[]);
