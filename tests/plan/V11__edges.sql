/* The rules' edges: an unnamed constraint, two changes in one ALTER,
   a default dropped, and what the parser cannot read. */
ALTER TABLE orders ADD CHECK (total >= 0);
ALTER TABLE users ADD COLUMN a int NOT NULL, DROP COLUMN b;
ALTER TABLE users ALTER COLUMN status DROP DEFAULT;
ALTER TABLE users ALTER COLUMN amount TYPE bigint USING amount::bigint;
FROBNICATE TABLE users;
