--
-- Partitioned tables: a registered parent covers its partitions, also
-- those created or attached later, at every level.
--
\set SHOW_CONTEXT never
CREATE TABLE event (customer_id bigint NOT NULL, at date NOT NULL, what text)
    PARTITION BY RANGE (at);
CREATE TABLE event_2025 PARTITION OF event
    FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
SELECT sor.register_table('event', 'customer_id', 'customer');

-- created later, and a sub-partitioned one
CREATE TABLE event_2026 PARTITION OF event
    FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')
    PARTITION BY LIST (what);
CREATE TABLE event_2026_misc PARTITION OF event_2026 DEFAULT;
-- attached later, with its columns in another order
CREATE TABLE event_2027 (what text, at date NOT NULL, customer_id bigint NOT NULL);
ALTER TABLE event ATTACH PARTITION event_2027
    FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');

SELECT tgrelid::regclass, tgname, tgenabled, tgparentid <> 0 AS cloned
  FROM pg_trigger WHERE tgname LIKE 'zzz_sor%'
   AND tgrelid::regclass::text LIKE 'event%'
 ORDER BY 1, 2;

-- customer 7 belongs to paris, 8 to london
INSERT INTO event VALUES (7, '2025-06-01', 'a'), (7, '2026-06-01', 'b'),
                         (7, '2027-06-01', 'c');
INSERT INTO event VALUES (8, '2025-06-01', 'x');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO event VALUES (8, '2026-06-01', 'x');
INSERT INTO event VALUES (8, '2027-06-01', 'x');
-- straight into a partition
INSERT INTO event_2026_misc VALUES (8, '2026-06-02', 'x');
INSERT INTO event_2027 VALUES ('x', '2027-06-02', 8);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO event_2027 VALUES ('y', '2027-06-02', 7);
-- an UPDATE that moves a row to another partition, and changes its key
UPDATE event SET at = '2027-07-01' WHERE what = 'a';
UPDATE event SET customer_id = 8 WHERE what = 'b';
-- TRUNCATE of the parent or of any partition
TRUNCATE event;
TRUNCATE event_2025;
TRUNCATE event_2026_misc;
TRUNCATE event_2027;
-- a partition's trigger cannot be switched off either
ALTER TABLE event_2027 DISABLE TRIGGER zzz_sor_enforce;
ALTER TABLE event_2026_misc DISABLE TRIGGER ALL;
DROP TRIGGER zzz_sor_truncate ON event_2025;
SELECT * FROM event ORDER BY at, what;

-- a registered table cannot become a partition of another
CREATE TABLE event_2028 (customer_id bigint NOT NULL, at date NOT NULL, what text);
SELECT sor.register_table('event_2028', 'customer_id', 'customer');
ALTER TABLE event ATTACH PARTITION event_2028
    FOR VALUES FROM ('2028-01-01') TO ('2029-01-01');
SELECT sor.unregister_table('event_2028');

-- a detached partition is an ordinary table again
ALTER TABLE event DETACH PARTITION event_2025;
INSERT INTO event_2025 VALUES (8, '2025-06-01', 'x');
TRUNCATE event_2025;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'event_2025'::regclass;

-- unregistering removes the triggers from every partition
SELECT sor.unregister_table('event');
SELECT count(*) AS sor_triggers FROM pg_trigger
 WHERE tgname LIKE 'zzz_sor%' AND tgrelid::regclass::text LIKE 'event%';
DROP TABLE event, event_2025, event_2028;
