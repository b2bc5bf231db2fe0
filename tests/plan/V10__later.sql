ALTER TABLE users ALTER COLUMN status SET DEFAULT 'active';
ALTER TABLE users ADD COLUMN a int, ADD COLUMN b int;
-- pgshift: down = amount::integer
ALTER TABLE users ALTER COLUMN amount TYPE bigint;
