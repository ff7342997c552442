-- The sor demo script (run by demo/run).
\set SHOW_CONTEXT never
\pset footer off
\set ECHO queries

\echo
\echo '== 1. Install sor; name the sites; this database is site paris'
CREATE EXTENSION sor;
SELECT sor.add_site('paris'), sor.add_site('london');
SELECT sor.set_local_site('paris');

\echo
\echo '== 2. Register a table: customers are records of domain "customer",'
\echo '==    named by their id; paris owns every customer by default'
CREATE TABLE customer (id bigint PRIMARY KEY, name text, city text);
SELECT sor.register_table('customer', 'id', 'customer', default_site => 'paris');

\echo
\echo '== 3. paris writes its records'
INSERT INTO customer VALUES (1, 'Amelie', 'Paris'), (2, 'Oliver', 'Paris');
UPDATE customer SET city = 'London' WHERE id = 2;

\echo
\echo '== 4. Oliver moved: paris hands record 2 to london'
SELECT sor.transfer('customer', '2', 'london') AS new_epoch;
SELECT * FROM sor.ownership;

\echo
\echo '== 5. From now on paris may not write record 2: the write is refused,'
\echo '==    and the error names the owner'
UPDATE customer SET name = 'Olivier' WHERE id = 2;
\echo 'SQLSTATE' :LAST_ERROR_SQLSTATE
\echo '==    ...the whole statement fails, also for the rows paris owns'
UPDATE customer SET name = upper(name);
\echo '==    ...and there is no way around it, not even TRUNCATE'
TRUNCATE customer;

\echo
\echo '== 6. Record 1 is still paris''s'
UPDATE customer SET name = 'Amelie P.' WHERE id = 1;
SELECT * FROM customer ORDER BY id;

\echo
\echo '== 7. Who owns what, and the history of every change'
SELECT sor.owner_of('customer', '1') AS owner_of_1,
       sor.owner_of('customer', '2') AS owner_of_2;
SELECT recorded_at_site, domain, key, action, from_site, to_site, epoch, changed_by
  FROM sor.ownership_history ORDER BY seq;

\echo
\echo '== 8. The same database seen as site london (simulated: a real london'
\echo '==    is a server of its own that receives copies by replication)'
SELECT sor.set_local_site('london', force => true);
UPDATE customer SET name = 'Olivier' WHERE id = 2;
UPDATE customer SET name = 'Amelie L.' WHERE id = 1;
SELECT * FROM customer ORDER BY id;

\echo
\echo '== 9. A command: a change to a record, posted for its group; a background'
\echo '==    worker runs it moments after the commit, as the role that posted it'
CREATE FUNCTION rename_customer(p jsonb) RETURNS void LANGUAGE sql AS $$
    UPDATE customer SET name = p->>'name' WHERE id = (p->>'id')::bigint
$$;
SELECT sor.enqueue('customer:2', 'rename_customer(jsonb)',
                   '{"id": 2, "name": "Olivier B."}') AS command_id;
SELECT pg_sleep(0.2);
SELECT * FROM customer ORDER BY id;
SELECT pid, state, commands_run FROM sor.workers ORDER BY pid;
SELECT backend_type, datname FROM pg_stat_activity
 WHERE backend_type LIKE 'sor%' ORDER BY 1;
