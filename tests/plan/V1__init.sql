-- Flyway-style migrations, as frameworks emit them.
BEGIN;
CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, amount integer);
CREATE INDEX users_name_idx ON users (name);
COMMIT;
