--
-- Changes that arrive by replication, played in one database.  A session
-- with a replication origin named sor_<site> and session_replication_role
-- = replica is what the apply worker of that site's stream looks like.
-- The local site is paris; the sites are paris, london, rome and tokyo_2.
--
\set SHOW_CONTEXT never
SELECT sor.set_local_site('paris', true);
CREATE TABLE item (id bigint PRIMARY KEY, note text);
CREATE TABLE item_part (item_id bigint, part text, note text,
                        PRIMARY KEY (item_id, part));
SELECT sor.register_table('item', 'id', 'item', default_site => 'paris');
SELECT sor.register_table('item_part', 'item_id', 'item');
SELECT count(pg_replication_origin_create(o))
  FROM unnest(ARRAY['sor_london', 'sor_rome', 'sor_tokyo_2', 'sor_nowhere']) o;

INSERT INTO item VALUES (1, 'paris 1');
SELECT sor.transfer('item', '2', 'london');

-- london's stream: its own record is applied; changes to records it does
-- not own are set aside, not raised
BEGIN;
SELECT pg_replication_origin_session_setup('sor_london');
SET LOCAL session_replication_role = replica;
INSERT INTO item VALUES (2, 'london 2');
UPDATE item SET note = 'london overwrites 1' WHERE id = 1;
INSERT INTO item VALUES (3, 'london 3');
SELECT pg_replication_origin_session_reset();
COMMIT;
SELECT * FROM item ORDER BY id;
SELECT reason, origin_site, owner_site, epoch, tbl, domain, key, operation,
       old_row, new_row
  FROM sor.conflicts ORDER BY id;

-- a stream from an origin that names no site: nothing is applied
BEGIN;
SELECT pg_replication_origin_session_setup('sor_nowhere');
SET LOCAL session_replication_role = replica;
UPDATE item SET note = 'from nowhere' WHERE id = 2;
SELECT pg_replication_origin_session_reset();
COMMIT;
SELECT note FROM item WHERE id = 2;
SELECT reason, origin_site, owner_site, key, operation FROM sor.conflicts
 WHERE origin_site IS NULL;

-- a set-aside change can be applied as a write of this site, which only
-- the owner may make, or discarded
SELECT sor.apply_conflict(id) FROM sor.conflicts
 WHERE key = '1' AND operation = 'UPDATE';
SELECT * FROM item WHERE id = 1;
SELECT sor.apply_conflict(id) FROM sor.conflicts WHERE origin_site IS NULL;
\echo :LAST_ERROR_SQLSTATE
SELECT sor.discard_conflict(id) FROM sor.conflicts WHERE origin_site IS NULL;
SELECT key, operation FROM sor.conflicts ORDER BY id;
SELECT sor.apply_conflict(NULL);
SELECT sor.apply_conflict(-1);
SELECT sor.discard_conflict(NULL);
SELECT sor.discard_conflict(-1);
-- the row images are for administrators
CREATE ROLE sor_reader;
SET ROLE sor_reader;
SELECT count(*) FROM sor.conflicts;
SELECT sor.discard_conflict(1);
RESET ROLE;
DROP ROLE sor_reader;

-- a transfer to another site is acknowledged by a command that a worker
-- (here sor.drain()) runs, so that the acknowledgement is this site's own
-- change and travels to every site
BEGIN;
SELECT pg_replication_origin_session_setup('sor_london');
SET LOCAL session_replication_role = replica;
UPDATE sor.owner_entry SET site = 'rome', epoch = 2, from_site = 'london'
 WHERE domain = 'item' AND key = '2';
SELECT pg_replication_origin_session_reset();
COMMIT;
SELECT handler, payload FROM sor.command WHERE group_key = 'sor.handoff_ack';
SELECT sor.drain();
SELECT domain, key, site, epoch FROM sor.handoff_ack ORDER BY key;
SELECT sor.owner_of('item', '2');

-- a transfer to this site: paris writes once every other site (rome and
-- tokyo_2; london handed it over) has acknowledged it, and cannot pass the
-- record on before
SELECT sor.transfer('item', '6', 'london');
INSERT INTO item VALUES (6, 'paris 6');
\echo :LAST_ERROR_SQLSTATE
BEGIN;
SELECT pg_replication_origin_session_setup('sor_london');
SET LOCAL session_replication_role = replica;
UPDATE sor.owner_entry SET site = 'paris', epoch = 2, from_site = 'london'
 WHERE domain = 'item' AND key = '6';
SELECT pg_replication_origin_session_reset();
COMMIT;
SELECT site, epoch, from_site, awaiting_acks FROM sor.owner_entry
 WHERE domain = 'item' AND key = '6';
SELECT domain, key, from_site, to_site, epoch, waiting_for FROM sor.handoffs
 WHERE domain = 'item' ORDER BY key;
INSERT INTO item VALUES (6, 'paris 6');
\echo :LAST_ERROR_SQLSTATE
SELECT sor.transfer('item', '6', 'rome');
\echo :LAST_ERROR_SQLSTATE
BEGIN;
SELECT pg_replication_origin_session_setup('sor_tokyo_2');
SET LOCAL session_replication_role = replica;
INSERT INTO sor.handoff_ack (domain, key, site, epoch) VALUES ('item', '6', 'tokyo_2', 2);
SELECT pg_replication_origin_session_reset();
COMMIT;
INSERT INTO item VALUES (6, 'paris 6');
BEGIN;
SELECT pg_replication_origin_session_setup('sor_rome');
SET LOCAL session_replication_role = replica;
INSERT INTO sor.handoff_ack (domain, key, site, epoch) VALUES ('item', '6', 'rome', 2);
SELECT pg_replication_origin_session_reset();
COMMIT;
INSERT INTO item VALUES (6, 'paris 6');
SELECT key, waiting_for FROM sor.handoffs WHERE domain = 'item';

-- an ownership change older than the one here is skipped
BEGIN;
SELECT pg_replication_origin_session_setup('sor_rome');
SET LOCAL session_replication_role = replica;
UPDATE sor.owner_entry SET site = 'rome', epoch = 1, from_site = NULL
 WHERE domain = 'item' AND key = '6';
SELECT pg_replication_origin_session_reset();
COMMIT;
SELECT site, epoch FROM sor.owner_entry WHERE domain = 'item' AND key = '6';

-- a takeover made at rome: paris's copy of the record is set aside and
-- deleted, rome's rows arrive, and the set-aside rows equal to them are
-- forgotten when rome's history row (the end of its takeover) arrives
INSERT INTO item VALUES (7, 'seven');
INSERT INTO item_part VALUES (7, 'a', 'same everywhere'),
                             (7, 'b', 'changed at paris only');
BEGIN;
SELECT pg_replication_origin_session_setup('sor_rome');
SET LOCAL session_replication_role = replica;
INSERT INTO sor.owner_entry (domain, key, site, epoch) VALUES ('item', '7', 'rome', 1);
SELECT count(*) AS paris_rows_left FROM item_part WHERE item_id = 7;
DELETE FROM item WHERE id = 7;
INSERT INTO item VALUES (7, 'seven');
INSERT INTO item_part VALUES (7, 'a', 'same everywhere'), (7, 'b', 'as rome has it');
INSERT INTO sor.ownership_history (recorded_at_site, seq, domain, key, action,
                                   from_site, to_site, epoch, changed_by)
    OVERRIDING SYSTEM VALUE
    VALUES ('rome', 1, 'item', '7', 'takeover', 'paris', 'rome', 1, 'admin');
SELECT pg_replication_origin_session_reset();
COMMIT;
SELECT * FROM item_part ORDER BY part;
SELECT reason, origin_site, owner_site, epoch, tbl, key, new_row
  FROM sor.conflicts WHERE key = '7';
UPDATE item SET note = 'paris again' WHERE id = 7;
\echo :LAST_ERROR_SQLSTATE

-- joining sites needs pglogical
SELECT sor.create_node(NULL);
SELECT sor.create_node('host=nowhere');
SELECT sor.subscribe('atlantis', 'host=nowhere');
SELECT sor.subscribe('paris', 'host=nowhere');
SELECT sor.subscribe('london', '');
SELECT sor.subscribe('london', 'host=nowhere');
SELECT site, is_local, subscription, conflicts FROM sor.sites;

SELECT sor.unregister_table('item_part');
SELECT sor.unregister_table('item');
DROP TABLE item, item_part;
DELETE FROM sor.command WHERE group_key = 'sor.handoff_ack';
SELECT count(pg_replication_origin_drop(o))
  FROM unnest(ARRAY['sor_london', 'sor_rome', 'sor_tokyo_2', 'sor_nowhere']) o;
