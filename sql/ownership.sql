--
-- Ownership: owner_of, claim, transfer, takeover, takeover_site.
--
\set SHOW_CONTEXT never
-- keys of the customer domain (default owner paris) are read as bigint,
-- so '007' and '7' name one record
SELECT sor.owner_of('customer', '1'), sor.owner_of('customer', '007');
SELECT sor.canonical_key('customer', '007');

-- a domain without a default owner
CREATE TABLE gadget (id uuid PRIMARY KEY, label text);
SELECT sor.register_table('gadget', 'id', 'gadget');
SELECT sor.owner_of('gadget', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11') IS NULL AS unowned;
SELECT sor.claim('gadget', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11');
SELECT domain, key, site, epoch FROM sor.ownership ORDER BY 1, 2;
SELECT sor.transfer('gadget', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'london');
SELECT sor.owner_of('gadget', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
-- the old owner can no longer transfer or claim it
SELECT sor.transfer('gadget', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'tokyo_2');
\echo :LAST_ERROR_SQLSTATE
SELECT sor.claim('gadget', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
\echo :LAST_ERROR_SQLSTATE
-- but it can take it over when london is lost: the epoch rises
SELECT sor.takeover('gadget', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
SELECT domain, key, site, epoch FROM sor.ownership ORDER BY 1, 2;

-- keys of the default owner get an entry when they move
SELECT sor.transfer('customer', '5', 'london');
SELECT sor.transfer('customer', '6', 'london');
SELECT sor.transfer('customer', '7', 'tokyo_2');
SELECT sor.owner_of('customer', '5'), sor.owner_of('customer', '7');
SELECT domain, key, site, epoch FROM sor.ownership ORDER BY 1, 2;

-- london is lost: take over all it owns
SELECT sor.takeover_site('london');
SELECT domain, key, site, epoch FROM sor.ownership ORDER BY 1, 2;
SELECT sor.takeover_site('london');

-- a domain whose default owner is lost
CREATE TABLE gizmo (id bigint);
SELECT sor.register_table('gizmo', 'id', 'gizmo', 'tokyo_2');
SELECT sor.owner_of('gizmo', '1');
SELECT sor.takeover_site('tokyo_2');
SELECT sor.owner_of('gizmo', '1'), sor.owner_of('customer', '7');
SELECT name, default_site, default_epoch FROM sor.domain WHERE name = 'gizmo';

-- the history lists every change, oldest first, and is append-only
SELECT recorded_at_site, seq, domain, key, action, from_site, to_site, epoch,
       changed_by
  FROM sor.ownership_history ORDER BY seq;
UPDATE sor.ownership_history SET epoch = 0;
DELETE FROM sor.ownership_history;
TRUNCATE sor.ownership_history;

-- bad input changes nothing
SELECT sor.owner_of(NULL, '1');
SELECT sor.owner_of('customer', NULL);
SELECT sor.owner_of('', '1');
SELECT sor.owner_of('customer', '');
SELECT sor.owner_of('no_such_domain', '1');
SELECT sor.owner_of('customer', 'abc');
SELECT sor.owner_of('gadget', 'not-a-uuid');
SELECT sor.claim(NULL, '1');
SELECT sor.claim('gadget', NULL);
SELECT sor.claim('no_such_domain', '1');
SELECT sor.claim('customer', 'x');
SELECT sor.claim('customer', '1');
SELECT sor.transfer('customer', '1', NULL);
SELECT sor.transfer('customer', '1', '');
SELECT sor.transfer('customer', '1', 'berlin');
SELECT sor.transfer('customer', '1', 'paris');
SELECT sor.transfer('customer', NULL, 'london');
SELECT sor.transfer(NULL, '1', 'london');
SELECT sor.transfer('gadget', 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'london');
\echo :LAST_ERROR_SQLSTATE
SELECT sor.takeover('customer', '1');
SELECT sor.takeover('gadget', 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
SELECT sor.takeover(NULL, '1');
SELECT sor.takeover('customer', NULL);
SELECT sor.takeover_site(NULL);
SELECT sor.takeover_site('');
SELECT sor.takeover_site('paris');
SELECT sor.takeover_site('berlin');
SELECT count(*) AS entries FROM sor.owner_entry;
SELECT count(*) AS history FROM sor.ownership_history;

-- the catalog is not writable directly, not even through the view
CREATE ROLE sor_stranger;
SET ROLE sor_stranger;
INSERT INTO sor.owner_entry VALUES ('customer', '1', 'london', 9);
UPDATE sor.owner_entry SET site = 'london';
DELETE FROM sor.domain;
UPDATE sor.ownership SET site = 'london';
UPDATE sor.local_identity SET site = 'london';
SELECT sor.transfer('customer', '1', 'london');
SELECT sor.claim('gadget', 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
SELECT sor.takeover('customer', '5');
SELECT sor.takeover_site('tokyo_2');
SELECT sor.set_local_site('london', true);
SELECT sor.add_site('rome');
SELECT sor.transfer_impl('customer', '1', 'london', 10);
SELECT sor.lock_record_for_handoff('customer', '1');
SELECT sor.prewarm_shared_cache('customer');
-- reading is fine
SELECT sor.owner_of('customer', '1'), sor.local_site();
RESET ROLE;
DROP ROLE sor_stranger;
SELECT domain, key, site, epoch FROM sor.ownership ORDER BY 1, 2;

-- a transaction that changed ownership cannot be prepared, and changes
-- nothing (writers would stop waiting for a prepared hand-off)
BEGIN;
SELECT sor.transfer('customer', '1', 'london');
PREPARE TRANSACTION 'sor_handoff';
BEGIN;
SELECT sor.set_local_site('london', true);
PREPARE TRANSACTION 'sor_local_site';
SELECT domain, key, site, epoch FROM sor.ownership ORDER BY 1, 2;
SELECT sor.local_site();

-- sor.prewarm_shared_cache() fills the shared ownership cache, which needs
-- sor in shared_preload_libraries (the isolation spec
-- shared_cache_never_stale checks what it does); bad input first
SELECT sor.prewarm_shared_cache(NULL);
SELECT sor.prewarm_shared_cache('');
SELECT sor.prewarm_shared_cache('no_such_domain');
SELECT sor.prewarm_shared_cache('customer');
