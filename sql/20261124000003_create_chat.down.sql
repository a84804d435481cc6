DROP TABLE app.messages, app.chat_sessions;
