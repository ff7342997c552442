--
-- Registering and unregistering tables.
--
\set SHOW_CONTEXT never
CREATE TABLE customer (id integer PRIMARY KEY, name text);
CREATE TABLE orders (
    order_id    bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customer ON DELETE CASCADE ON UPDATE CASCADE,
    amount      numeric
);
SELECT sor.register_table('customer', 'id', 'customer', 'paris');
-- a second table in the same domain: its key column names the customer
SELECT sor.register_table('orders', 'customer_id', 'customer');
SELECT tbl, domain, key_column FROM sor.registered_table ORDER BY tbl::text;
SELECT name, key_type, default_site, default_epoch FROM sor.domain ORDER BY 1;
SELECT tgrelid::regclass, tgname, tgenabled, tgtype
  FROM pg_trigger WHERE tgname LIKE 'zzz_sor%' ORDER BY 1, 2;

-- the domain defaults to the table's qualified name
CREATE SCHEMA "Shop";
CREATE TABLE "Shop"."Widget" (code text PRIMARY KEY);
SELECT sor.register_table('"Shop"."Widget"', 'code');
SELECT domain, key_column FROM sor.registered_table
 WHERE tbl = '"Shop"."Widget"'::regclass;
SELECT name, key_type, default_site FROM sor.domain WHERE name LIKE '"Shop"%';

-- bad input changes nothing
CREATE TABLE spare (a integer, n numeric, c char(3), u uuid, d date, t text);
SELECT sor.register_table(NULL, 'id');
SELECT sor.register_table('customer', NULL);
SELECT sor.register_table('customer', '');
SELECT sor.register_table('customer', 'id');
SELECT sor.register_table('no_such_table', 'id');
SELECT sor.register_table('spare', 'nope');
SELECT sor.register_table('spare', 'ctid');
SELECT sor.register_table('spare', 'n');
SELECT sor.register_table('spare', 'c');
SELECT sor.register_table('spare', 'd');
SELECT sor.register_table('spare', 'u', 'customer');
SELECT sor.register_table('spare', 'a', '');
SELECT sor.register_table('spare', 'a', repeat('d', 256));
SELECT sor.register_table('spare', 'a', 'spare', 'berlin');
SELECT sor.register_table('spare', 'a', 'spare', '');
SELECT sor.register_table('spare', 'a', 'spare', 'Paris');
SELECT sor.register_table('spare', 'a', 'customer', 'london');
CREATE VIEW spare_view AS SELECT * FROM spare;
SELECT sor.register_table('spare_view', 'a');
CREATE SEQUENCE spare_seq;
SELECT sor.register_table('spare_seq', 'last_value');
CREATE TEMP TABLE spare_temp (a integer);
SELECT sor.register_table('spare_temp', 'a');
CREATE TABLE spare_parted (a integer) PARTITION BY LIST (a);
CREATE TABLE spare_part1 PARTITION OF spare_parted FOR VALUES IN (1);
SELECT sor.register_table('spare_part1', 'a');
CREATE TABLE spare_generated (a integer, k bigint GENERATED ALWAYS AS (a * 2) STORED);
SELECT sor.register_table('spare_generated', 'k');
CREATE TABLE spare_late (a integer);
CREATE TRIGGER zzzz_late BEFORE INSERT ON spare_late
    FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger();
SELECT sor.register_table('spare_late', 'a');
SELECT count(*) AS registered FROM sor.registered_table;
SELECT name FROM sor.domain ORDER BY 1;
SELECT count(*) AS sor_triggers FROM pg_trigger WHERE tgname LIKE 'zzz_sor%';

-- a domain's default site can be set by a later registration if it had none
SELECT sor.register_table('spare', 't', '"Shop"."Widget"', 'london');
SELECT name, default_site FROM sor.domain WHERE name = '"Shop"."Widget"';
SELECT sor.unregister_table('spare');

-- unregistering
SELECT sor.unregister_table(NULL);
SELECT sor.unregister_table('spare');
SELECT sor.unregister_table('no_such_table');
SELECT sor.unregister_table('"Shop"."Widget"');
SELECT tgname FROM pg_trigger WHERE tgrelid = '"Shop"."Widget"'::regclass;
-- its domain stays, with whatever ownership it has
SELECT name FROM sor.domain ORDER BY 1;
TRUNCATE "Shop"."Widget";

-- dropping a registered table unregisters it
CREATE TABLE doomed (k text);
SELECT sor.register_table('doomed', 'k', 'doomed', 'paris');
DROP TABLE doomed;
SELECT count(*) AS doomed_registered FROM sor.registered_table
 WHERE domain = 'doomed';
DROP VIEW spare_view;
DROP TABLE spare, spare_parted, spare_late, spare_generated;
DROP SEQUENCE spare_seq;
DROP SCHEMA "Shop" CASCADE;
