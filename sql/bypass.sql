--
-- An ordinary role that owns a registered table cannot get around the
-- enforcement: not by DDL on the trigger or the key column, not by
-- TRUNCATE, not by session_replication_role, not by writing the catalog.
--
\set SHOW_CONTEXT never
CREATE ROLE app_owner;
GRANT CREATE ON SCHEMA public TO app_owner;
SET ROLE app_owner;
CREATE TABLE account (id integer PRIMARY KEY, balance integer NOT NULL);
CREATE FUNCTION account_touch() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN NEW.id := NEW.id + 1; RETURN NEW; END $$;
RESET ROLE;
SELECT sor.register_table('account', 'id', 'account', 'paris');
SELECT sor.transfer('account', '2', 'london');
INSERT INTO account VALUES (1, 100);

SET ROLE app_owner;
-- writes of london's record
INSERT INTO account VALUES (2, 0);
\echo :LAST_ERROR_SQLSTATE
-- switching the trigger off, in every way ALTER TABLE offers
ALTER TABLE account DISABLE TRIGGER zzz_sor_enforce;
ALTER TABLE account DISABLE TRIGGER zzz_sor_truncate;
ALTER TABLE account DISABLE TRIGGER ALL;
ALTER TABLE account DISABLE TRIGGER USER;
ALTER TABLE account ENABLE TRIGGER zzz_sor_enforce;
ALTER TABLE account ENABLE REPLICA TRIGGER zzz_sor_enforce;
ALTER TABLE account ENABLE TRIGGER ALL;
DROP TRIGGER zzz_sor_enforce ON account;
DROP TRIGGER zzz_sor_truncate ON account;
ALTER TRIGGER zzz_sor_enforce ON account RENAME TO renamed;
-- a BEFORE ROW trigger that fires after sor's could change the key after
-- the check
CREATE TRIGGER zzzz_after_sor BEFORE INSERT OR UPDATE ON account
    FOR EACH ROW EXECUTE FUNCTION account_touch();
-- one that fires before it is fine: sor checks the key it leaves
CREATE TRIGGER account_touch BEFORE INSERT ON account
    FOR EACH ROW EXECUTE FUNCTION account_touch();
INSERT INTO account VALUES (1, 0);
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER account_touch ON account;
-- the key column
ALTER TABLE account RENAME COLUMN id TO account_id;
ALTER TABLE account ALTER COLUMN id TYPE numeric;
ALTER TABLE account DROP COLUMN id CASCADE;
-- other columns may change
ALTER TABLE account ADD COLUMN note text;
ALTER TABLE account RENAME COLUMN note TO remark;
-- TRUNCATE
TRUNCATE account;
\echo :LAST_ERROR_SQLSTATE
-- session_replication_role and replication origins need rights it has not
SET session_replication_role = replica;
SELECT pg_replication_origin_session_setup('anything');
-- the catalog and the functions that change it
INSERT INTO sor.owner_entry VALUES ('account', '2', 'paris', 5);
UPDATE sor.domain SET default_site = 'london';
DELETE FROM sor.registered_table;
SELECT sor.unregister_table('account');
SELECT sor.register_table('account', 'balance');
SELECT sor.takeover('account', '2');
SELECT sor.unregister_table_impl('account', 10);
RESET ROLE;

-- a role allowed to set session_replication_role gets no further
GRANT SET ON PARAMETER session_replication_role TO app_owner;
SET ROLE app_owner;
SET session_replication_role = replica;
INSERT INTO account VALUES (2, 0);
\echo :LAST_ERROR_SQLSTATE
UPDATE account SET balance = 50 WHERE id = 1;
RESET session_replication_role;
RESET ROLE;
REVOKE SET ON PARAMETER session_replication_role FROM app_owner;

-- everything is as it was
SELECT * FROM account ORDER BY id;
SELECT tgname, tgenabled FROM pg_trigger
 WHERE tgrelid = 'account'::regclass ORDER BY 1;
SELECT domain, key, site, epoch FROM sor.ownership WHERE domain = 'account';

-- changing the key column's type within its kind is allowed, and the
-- trigger reads keys with the new type from then on
SELECT sor.transfer('account', '4294967297', 'london');
INSERT INTO account VALUES (3, 0);
ALTER TABLE account ALTER COLUMN id TYPE bigint;
INSERT INTO account VALUES (4294967297, 0);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO account VALUES (4294967298, 0);
SELECT id FROM account ORDER BY id;
