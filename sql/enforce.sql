--
-- The enforcement trigger: every write path, with the local site "paris".
-- customer keys 1-4 belong to paris (the domain's default), 5 and 6 to
-- paris again after the takeover, 7 to paris, 8 and 9 are handed to
-- london here.
--
\set SHOW_CONTEXT never
SELECT sor.transfer('customer', '8', 'london');
SELECT sor.transfer('customer', '9', 'london');

-- copies of london's records arrive by replication: a session with a
-- replication origin and session_replication_role = replica, as apply
-- workers have, is not stopped
SELECT pg_replication_origin_create('sor_london') > 0 AS origin_created;
BEGIN;
SELECT pg_replication_origin_session_setup('sor_london');
SET LOCAL session_replication_role = replica;
INSERT INTO customer VALUES (8, 'copy of london 8'), (9, 'copy of london 9');
INSERT INTO orders VALUES (80, 8, 10), (90, 9, 20);
UPDATE customer SET name = name || ' (updated at london)' WHERE id = 9;
SELECT pg_replication_origin_session_reset();
COMMIT;

-- writes of records this site owns go through
INSERT INTO customer VALUES (1, 'one'), (2, 'two'), (3, 'three');
UPDATE customer SET name = 'ONE' WHERE id = 1;
DELETE FROM customer WHERE id = 3;
INSERT INTO orders VALUES (10, 1, 100), (20, 2, 200);

-- a write of a record another site owns is refused, with its owner
INSERT INTO customer VALUES (8, 'mine now');
\echo :LAST_ERROR_SQLSTATE
UPDATE customer SET name = 'changed' WHERE id = 8;
\echo :LAST_ERROR_SQLSTATE
DELETE FROM customer WHERE id = 9;
\echo :LAST_ERROR_SQLSTATE
UPDATE orders SET amount = 0 WHERE order_id = 80;
\echo :LAST_ERROR_SQLSTATE

-- the whole statement fails: the rows before the refused one are gone too
INSERT INTO customer VALUES (4, 'four'), (9, 'nine');
UPDATE customer SET name = upper(name);
DELETE FROM customer;
SELECT * FROM customer ORDER BY id;

-- an UPDATE that changes the key needs both the old and the new record
UPDATE customer SET id = 9 WHERE id = 2;
\echo :LAST_ERROR_SQLSTATE
UPDATE customer SET id = 4 WHERE id = 8;
\echo :LAST_ERROR_SQLSTATE
-- an owned key changed to another owned key, cascading to orders
UPDATE customer SET id = 4 WHERE id = 2;
SELECT order_id, customer_id FROM orders WHERE order_id = 20;
UPDATE customer SET id = 2 WHERE id = 4;

-- COPY
COPY customer FROM stdin;
4	four
9	nine
\.
COPY customer FROM stdin;
4	four
\.

-- INSERT ... ON CONFLICT
INSERT INTO customer VALUES (8, 'x') ON CONFLICT (id) DO NOTHING;
INSERT INTO customer VALUES (9, 'x') ON CONFLICT (id) DO UPDATE SET name = 'taken';
INSERT INTO customer VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET name = 'one again';
INSERT INTO customer VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET id = 8;

-- MERGE
MERGE INTO customer c USING (VALUES (9, 'merged'), (2, 'merged')) AS s(id, name)
   ON c.id = s.id
 WHEN MATCHED THEN UPDATE SET name = s.name;
MERGE INTO customer c USING (VALUES (12, 'new')) AS s(id, name)
   ON c.id = s.id
 WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.name);
MERGE INTO customer c USING (VALUES (8)) AS s(id)
   ON c.id = s.id
 WHEN MATCHED THEN DELETE;
MERGE INTO customer c USING (VALUES (2, 'merged')) AS s(id, name)
   ON c.id = s.id
 WHEN MATCHED THEN UPDATE SET name = s.name;

-- foreign-key cascades: deleting customer 1 deletes its orders (paris's);
-- deleting a product deletes orders lines of london's customers: refused
CREATE TABLE product (sku text PRIMARY KEY);
INSERT INTO product VALUES ('pen'), ('ink');
ALTER TABLE orders ADD COLUMN sku text REFERENCES product ON DELETE CASCADE;
BEGIN;
SELECT pg_replication_origin_session_setup('sor_london');
SET LOCAL session_replication_role = replica;
UPDATE orders SET sku = 'ink' WHERE order_id = 90;
SELECT pg_replication_origin_session_reset();
COMMIT;
UPDATE orders SET sku = 'pen' WHERE order_id = 10;
DELETE FROM product WHERE sku = 'ink';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM customer WHERE id = 1;
SELECT * FROM orders ORDER BY order_id;

-- a key column may not be NULL in a registered table
ALTER TABLE orders ALTER COLUMN customer_id DROP NOT NULL;
INSERT INTO orders VALUES (30, NULL, 1);
\echo :LAST_ERROR_SQLSTATE

-- a record without an owner cannot be written until it is claimed
INSERT INTO gadget VALUES ('b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'g');
\echo :LAST_ERROR_SQLSTATE
SELECT sor.claim('gadget', 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
INSERT INTO gadget VALUES ('b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'g');

-- claiming and writing in one transaction
BEGIN;
SELECT sor.claim('gadget', 'c0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
INSERT INTO gadget VALUES ('c0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'h');
COMMIT;

-- from the moment a transfer commits, the old owner cannot write
BEGIN;
UPDATE customer SET name = 'last write at paris' WHERE id = 2;
SELECT sor.transfer('customer', '2', 'london');
UPDATE customer SET name = 'too late' WHERE id = 2;
ROLLBACK;
BEGIN;
SELECT sor.transfer('customer', '2', 'london');
COMMIT;
UPDATE customer SET name = 'too late' WHERE id = 2;
\echo :LAST_ERROR_SQLSTATE

-- session_replication_role = replica without a replication origin is no
-- way around the trigger, not even for a superuser
SET session_replication_role = replica;
UPDATE customer SET name = 'sneaky' WHERE id = 8;
\echo :LAST_ERROR_SQLSTATE
INSERT INTO customer VALUES (5, 'five');
RESET session_replication_role;

-- TRUNCATE of a registered table is refused outright
TRUNCATE customer CASCADE;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE orders;

-- until the local site is set, every write is refused
BEGIN;
DELETE FROM sor.local_identity;
INSERT INTO customer VALUES (6, 'six');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
INSERT INTO customer VALUES (6, 'six');

-- TRUNCATE ... CASCADE that reaches a registered table is refused too
TRUNCATE product CASCADE;
\echo :LAST_ERROR_SQLSTATE

-- unregistered tables are not affected
CREATE TABLE notes (id integer, body text);
INSERT INTO notes VALUES (8, 'note');
UPDATE notes SET body = 'edited';
TRUNCATE notes;
DROP TABLE notes;

SELECT * FROM customer ORDER BY id;
SELECT * FROM orders ORDER BY order_id;
-- a TRUNCATE that arrives by replication is applied: it was allowed where
-- it was made
CREATE TABLE scratch (k bigint);
SELECT sor.register_table('scratch', 'k', 'customer');
BEGIN;
SELECT pg_replication_origin_session_setup('sor_london');
SET LOCAL session_replication_role = replica;
INSERT INTO scratch VALUES (8), (9);
TRUNCATE scratch;
SELECT pg_replication_origin_session_reset();
COMMIT;
SELECT count(*) AS scratch_rows FROM scratch;
SELECT sor.unregister_table('scratch');
DROP TABLE scratch;
SELECT pg_replication_origin_drop('sor_london');

-- A domain whose default owner is this site, with ownership entries for
-- some keys.  One with few entries is read whole into the cache at its
-- first lookup, so a key the cache lacks has no entry; one with many is
-- looked up key by key.  Both answer alike, also after the entries change.
CREATE TABLE wallet (id integer PRIMARY KEY, note text);
CREATE TABLE ledger (id integer PRIMARY KEY, note text);
SELECT sor.register_table('wallet', 'id', 'wallet', default_site => 'paris');
SELECT sor.register_table('ledger', 'id', 'ledger', default_site => 'paris');
INSERT INTO sor.owner_entry (domain, key, site, epoch)
SELECT 'wallet', i::text, 'london', 1 FROM generate_series(1, 10) i;
INSERT INTO sor.owner_entry (domain, key, site, epoch)
SELECT 'ledger', i::text, 'london', 1 FROM generate_series(1, 2000) i;
-- an entry of one domain says nothing of the same key in another
INSERT INTO sor.owner_entry (domain, key, site, epoch)
VALUES ('wallet', '4000', 'london', 1);
-- the first lookup is of a key without an entry, the next of one with
INSERT INTO wallet VALUES (5000, 'paris''s by default');
INSERT INTO wallet VALUES (3, 'london''s');
INSERT INTO ledger VALUES (5000, 'paris''s by default');
INSERT INTO ledger VALUES (1500, 'london''s');
INSERT INTO ledger VALUES (2, 'london''s');
INSERT INTO ledger VALUES (4000, 'paris''s by default');
INSERT INTO wallet VALUES (4000, 'london''s');
-- entries added and removed later are seen
INSERT INTO sor.owner_entry (domain, key, site, epoch)
VALUES ('wallet', '5001', 'london', 1), ('ledger', '5001', 'london', 1);
DELETE FROM sor.owner_entry WHERE key = '3' AND domain IN ('wallet', 'ledger');
INSERT INTO wallet VALUES (5001, 'london''s');
INSERT INTO ledger VALUES (5001, 'london''s');
INSERT INTO wallet VALUES (3, 'paris''s by default now');
INSERT INTO ledger VALUES (3, 'paris''s by default now');
SELECT 'wallet' AS tbl, * FROM wallet UNION ALL SELECT 'ledger', * FROM ledger
 ORDER BY 1, 2;
-- Bulk writes: past 16 records a transaction locks the whole domain, and
-- where all of a domain's entries are cached a key is then checked without
-- its text form.  A key with an entry for another site is still refused,
-- as the last row of a bulk write too: integer keys (an integer column in
-- a domain of bigint keys), text keys (varchar) and uuid keys.
INSERT INTO wallet SELECT i, 'bulk' FROM generate_series(100, 139) i;
INSERT INTO wallet SELECT i, 'bulk' FROM generate_series(200, 239) i
UNION ALL SELECT 7, 'london''s';
SELECT count(*) FILTER (WHERE id BETWEEN 100 AND 139) AS written,
       count(*) FILTER (WHERE id BETWEEN 200 AND 239) AS refused
  FROM wallet;
CREATE TABLE badge (code varchar(20) PRIMARY KEY);
CREATE TABLE device (id uuid PRIMARY KEY);
SELECT sor.register_table('badge', 'code', 'badge', default_site => 'paris');
SELECT sor.register_table('device', 'id', 'device', default_site => 'paris');
INSERT INTO sor.owner_entry (domain, key, site, epoch)
VALUES ('badge', 'B-7', 'london', 1),
       ('device', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'london', 1);
INSERT INTO badge SELECT 'B-' || i FROM generate_series(100, 139) i;
INSERT INTO badge SELECT 'B-' || i FROM generate_series(200, 239) i
UNION ALL SELECT 'B-7';
INSERT INTO device SELECT md5(i::text)::uuid FROM generate_series(1, 40) i;
INSERT INTO device SELECT md5(i::text)::uuid FROM generate_series(41, 80) i
UNION ALL SELECT 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11';
-- an entry added later is seen by the next bulk write
INSERT INTO sor.owner_entry (domain, key, site, epoch)
VALUES ('badge', 'B-250', 'london', 1);
INSERT INTO badge SELECT 'B-' || i FROM generate_series(240, 260) i;
SELECT (SELECT count(*) FROM badge) AS badges, (SELECT count(*) FROM device) AS devices;
SELECT sor.unregister_table('badge'), sor.unregister_table('device');
DROP TABLE badge, device;
DELETE FROM sor.owner_entry WHERE domain IN ('badge', 'device');
DELETE FROM sor.domain WHERE name IN ('badge', 'device');
SELECT sor.unregister_table('wallet'), sor.unregister_table('ledger');
DROP TABLE wallet, ledger;
DELETE FROM sor.owner_entry WHERE domain IN ('wallet', 'ledger');
DELETE FROM sor.domain WHERE name IN ('wallet', 'ledger');
