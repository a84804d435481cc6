DROP FUNCTION app.queue_export_mail(bytea, text, text, text);
DROP FUNCTION app.export_purge();
DROP FUNCTION app.export_download(bytea);
DROP FUNCTION app.export_claim(interval);
DROP TABLE app.export_chunks;
DROP TABLE app.exports;
