DROP TABLE app.domain_claims;
