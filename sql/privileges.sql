--
-- Who may change what: EXECUTE grants on the functions, ownership of the
-- tables, and the role recorded in the history.
--
\set SHOW_CONTEXT never
CREATE ROLE app_writer;
CREATE ROLE sor_admin;
GRANT EXECUTE ON FUNCTION sor.claim(text, text), sor.transfer(text, text, text)
    TO app_writer;
GRANT EXECUTE ON FUNCTION sor.register_table(regclass, name, text, text),
                          sor.unregister_table(regclass),
                          sor.takeover(text, text),
                          sor.takeover_site(text),
                          sor.add_site(text),
                          sor.set_local_site(text, boolean)
    TO sor_admin;

-- a role granted claim and transfer hands records on; the history names it
SET ROLE app_writer;
SELECT sor.transfer('account', '1', 'london');
SELECT sor.claim('gadget', 'd0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
-- it was not granted takeover
SELECT sor.takeover('account', '1');
RESET ROLE;
SELECT domain, key, action, from_site, to_site, changed_by
  FROM sor.ownership_history WHERE changed_by = 'app_writer' ORDER BY seq;

-- an administrator role may register only tables it owns
SET ROLE sor_admin;
SELECT sor.register_table('product', 'sku');
SELECT sor.unregister_table('account');
SELECT sor.add_site('rome');
SELECT sor.takeover('account', '1');
RESET ROLE;
GRANT sor_admin TO app_owner;
SET ROLE app_owner;
CREATE TABLE ledger (account_id integer);
SELECT sor.register_table('ledger', 'account_id', 'account');
SELECT sor.unregister_table('ledger');
RESET ROLE;

-- what they did
SELECT tbl, domain FROM sor.registered_table ORDER BY tbl::text;
SELECT name FROM sor.site ORDER BY 1;
DROP TABLE ledger;
REVOKE sor_admin FROM app_owner;
