--
-- The command queue without background workers: enqueue, drain, failures,
-- retry, skip, the rights a handler runs with, and bad input.
--
\set SHOW_CONTEXT never
CREATE TABLE cmd_log (
    id      integer GENERATED ALWAYS AS IDENTITY,
    g       text,
    n       integer,
    who     name,
    path    text
);
GRANT INSERT ON cmd_log TO PUBLIC;
CREATE FUNCTION log_cmd(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cmd_log (g, n, who, path)
    VALUES (p->>'g', (p->>'n')::integer, current_user,
            current_setting('search_path'));
END
$$;
CREATE TABLE flaky_switch (failing boolean);
INSERT INTO flaky_switch VALUES (true);
GRANT SELECT ON flaky_switch TO PUBLIC;
CREATE FUNCTION flaky(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cmd_log (g, n, who) VALUES (p->>'g', (p->>'n')::integer, current_user);
    IF (SELECT failing FROM flaky_switch) THEN
        RAISE EXCEPTION 'command % of group % failed', p->>'n', p->>'g';
    END IF;
END
$$;

-- commands of two groups; each group runs in the order of its commands
SELECT sor.enqueue('a', 'log_cmd(jsonb)', '{"g": "a", "n": 1}') > 0 AS enqueued;
SELECT sor.enqueue('b', 'log_cmd(jsonb)', '{"g": "b", "n": 1}') > 0 AS enqueued;
SELECT sor.enqueue('a', 'log_cmd(jsonb)', '{"g": "a", "n": 2}') > 0 AS enqueued;
SELECT sor.enqueue('a', 'log_cmd(jsonb)', '{"g": "a", "n": 3}') > 0 AS enqueued;
SELECT group_key, pending, parked_at, head_attempts FROM sor.queue ORDER BY 1;
-- nothing runs while nobody drains (no workers here)
SELECT count(*) AS ran FROM cmd_log;
SELECT sor.drain(0);
SELECT sor.drain(2);
SELECT sor.drain();
SELECT sor.drain();
SELECT g, n, who, path FROM cmd_log ORDER BY id;
SELECT count(*) AS waiting FROM sor.command;
SELECT count(*) AS groups FROM sor.command_group;

-- a command enqueued in a transaction that rolls back does not exist
BEGIN;
SELECT sor.enqueue('a', 'log_cmd(jsonb)', '{"g": "a", "n": 99}') > 0 AS enqueued;
ROLLBACK;
SELECT sor.drain();

-- a failing command is rolled back alone and recorded; its group waits
-- (later commands of it too, since order matters); other groups go on
TRUNCATE cmd_log;
SELECT sor.enqueue('f', 'flaky(jsonb)', '{"g": "f", "n": 1}') AS flaky_id \gset
SELECT sor.enqueue('f', 'log_cmd(jsonb)', '{"g": "f", "n": 2}') > 0 AS enqueued;
SELECT sor.enqueue('h', 'log_cmd(jsonb)', '{"g": "h", "n": 1}') > 0 AS enqueued;
SELECT sor.drain();
SELECT g, n FROM cmd_log ORDER BY id;
SELECT id = :flaky_id AS is_flaky, group_key, attempts, last_error, parked
  FROM sor.failed_commands;
SELECT group_key, pending, next_attempt_at > now() AS backing_off, parked_at
  FROM sor.queue;
-- in backoff: nothing to run yet
SELECT sor.drain();
-- sor.retry makes it ready at once, with a fresh set of attempts
SELECT sor.retry('f');
SELECT sor.drain();
SELECT attempts, last_error FROM sor.failed_commands;
-- fixed: the retry runs the group to its end, in order
UPDATE flaky_switch SET failing = false;
SELECT sor.retry('f');
SELECT sor.drain();
SELECT g, n FROM cmd_log ORDER BY id;
SELECT count(*) AS waiting FROM sor.command;

-- sor.skip takes a command out; it stays visible
UPDATE flaky_switch SET failing = true;
SELECT sor.enqueue('s', 'flaky(jsonb)', '{"g": "s", "n": 1}') AS skip_id \gset
SELECT sor.enqueue('s', 'log_cmd(jsonb)', '{"g": "s", "n": 2}') > 0 AS enqueued;
SELECT sor.drain();
SELECT sor.skip(:skip_id);
SELECT sor.drain();
SELECT id = :skip_id AS is_skipped, group_key, handler, payload, attempts,
       last_error, skipped_by
  FROM sor.skipped_command;
SELECT g, n FROM cmd_log WHERE g = 's' ORDER BY id;

-- a handler runs as the role that enqueued it, with that role's settings
-- and the default search_path, whoever drains
CREATE ROLE queue_user;
CREATE ROLE queue_other;
ALTER ROLE queue_other SET search_path = pg_catalog, public;
TRUNCATE cmd_log;
SET ROLE queue_user;
SELECT sor.enqueue('r', 'log_cmd(jsonb)', '{"g": "r", "n": 1}') > 0 AS enqueued;
RESET ROLE;
SET ROLE queue_other;
SELECT sor.enqueue('r', 'log_cmd(jsonb)', '{"g": "r", "n": 2}') > 0 AS enqueued;
RESET ROLE;
-- sor.drain() runs only the commands of roles the caller acts for; the
-- group waits at the first command it may not run
SET ROLE queue_other;
SELECT sor.drain();
RESET ROLE;
SET search_path = pg_catalog;
SELECT sor.drain();
RESET search_path;
SELECT g, n, who, path FROM cmd_log ORDER BY id;

-- a role cannot make a command run with rights it has not: the handler
-- runs as the role, and fails where the role may not write
CREATE TABLE guarded (n integer);
CREATE FUNCTION write_guarded(p jsonb) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO guarded VALUES ((p->>'n')::integer) $$;
SET ROLE queue_user;
SELECT sor.enqueue('w', 'write_guarded(jsonb)', '{"n": 1}') > 0 AS enqueued;
RESET ROLE;
SELECT sor.drain();
SELECT group_key, attempts, last_error FROM sor.failed_commands;
SELECT count(*) AS written FROM guarded;
SELECT sor.skip(id) FROM sor.command WHERE group_key = 'w';

-- a handler's deferred triggers fire before the command completes, as its
-- role, and their failure is the command's
CREATE TABLE deferred_log (n integer, who name);
GRANT INSERT ON deferred_log TO PUBLIC;
CREATE FUNCTION note_deferred() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.n < 0 THEN
        RAISE EXCEPTION 'deferred check of % failed', NEW.n;
    END IF;
    UPDATE deferred_log SET who = current_user WHERE n = NEW.n;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER note_deferred AFTER INSERT ON deferred_log
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION note_deferred();
GRANT SELECT, UPDATE ON deferred_log TO PUBLIC;
CREATE FUNCTION insert_deferred(p jsonb) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO deferred_log (n) VALUES ((p->>'n')::integer) $$;
SET ROLE queue_user;
SELECT sor.enqueue('d', 'insert_deferred(jsonb)', '{"n": 1}') > 0 AS enqueued;
SELECT sor.enqueue('e', 'insert_deferred(jsonb)', '{"n": -1}') > 0 AS enqueued;
SELECT sor.drain();
RESET ROLE;
SELECT n, who FROM deferred_log;
SELECT group_key, attempts, last_error FROM sor.failed_commands;
SELECT sor.skip(id) FROM sor.command WHERE group_key = 'e';

-- every handler starts with its constraints immediate, wherever it stands
-- in a batch; one that needs a deferred check asks for it
CREATE TABLE parent (id integer PRIMARY KEY);
CREATE TABLE child (parent_id integer REFERENCES parent
                    DEFERRABLE INITIALLY DEFERRED);
GRANT SELECT, INSERT ON parent, child TO PUBLIC;
CREATE FUNCTION child_first(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF (p->>'defer')::boolean THEN
        SET CONSTRAINTS ALL DEFERRED;
    END IF;
    INSERT INTO child VALUES ((p->>'n')::integer);
    INSERT INTO parent VALUES ((p->>'n')::integer);
END
$$;
SET ROLE queue_user;
SELECT sor.enqueue('c1', 'child_first(jsonb)', '{"n": 1, "defer": false}') > 0 AS enqueued;
SELECT sor.enqueue('c1', 'child_first(jsonb)', '{"n": 2, "defer": false}') > 0 AS enqueued;
SELECT sor.enqueue('c2', 'child_first(jsonb)', '{"n": 3, "defer": true}') > 0 AS enqueued;
SELECT sor.drain();
RESET ROLE;
SELECT group_key, attempts, last_error FROM sor.failed_commands;
SELECT * FROM parent ORDER BY id;
SELECT sor.skip(id) FROM sor.command WHERE group_key = 'c1';

-- sor.drain() runs another role's handler as a security-restricted
-- operation: it cannot leave temporary objects in the caller's session
CREATE FUNCTION make_temp(p jsonb) RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN CREATE TEMP TABLE left_behind (x integer); END $$;
GRANT TEMPORARY ON DATABASE contrib_regression TO queue_user;
SET ROLE queue_user;
SELECT sor.enqueue('t', 'make_temp(jsonb)', '{}') > 0 AS enqueued;
RESET ROLE;
SELECT sor.drain();
SELECT group_key, attempts, last_error FROM sor.failed_commands;
SELECT sor.skip(id) FROM sor.command WHERE group_key = 't';

-- settings a handler cannot take are left out, as on a fresh connection;
-- ALTER ROLE ALL settings apply
ALTER ROLE queue_user SET role = queue_other;
ALTER ROLE ALL SET application_name = 'from alter role all';
CREATE FUNCTION log_app(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cmd_log (g, n, who, path)
    VALUES ('app', 0, current_user, current_setting('application_name'));
END
$$;
SET ROLE queue_user;
SELECT sor.enqueue('app', 'log_app(jsonb)', '{}') > 0 AS enqueued;
RESET ROLE;
SELECT sor.drain();
SELECT g, who, path FROM cmd_log WHERE g = 'app';
ALTER ROLE queue_user RESET role;
ALTER ROLE ALL RESET application_name;

-- a drain that may not run a group's next command does not hold the group
SET ROLE queue_user;
SELECT sor.enqueue('held', 'log_cmd(jsonb)', '{"g": "held", "n": 1}') > 0 AS enqueued;
RESET ROLE;
BEGIN;
SET LOCAL ROLE queue_other;
SELECT sor.drain();
SELECT count(*) AS group_locks_held FROM pg_locks
 WHERE locktype = 'advisory' AND objsubid = 21251 AND pid = pg_backend_pid();
COMMIT;
SELECT sor.drain();

-- bad input changes nothing
CREATE FUNCTION two_args(a jsonb, b jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION returns_set(p jsonb) RETURNS SETOF integer LANGUAGE sql AS $$ SELECT 1 $$;
CREATE PROCEDURE a_procedure(p jsonb) LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION secret_handler(p jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
REVOKE EXECUTE ON FUNCTION secret_handler(jsonb) FROM PUBLIC;
SELECT sor.enqueue(NULL, 'log_cmd(jsonb)', '{}');
SELECT sor.enqueue('', 'log_cmd(jsonb)', '{}');
SELECT sor.enqueue('x', NULL, '{}');
SELECT sor.enqueue('x', 'log_cmd(jsonb)', NULL);
SELECT sor.enqueue('x', 'no_such_handler(jsonb)', '{}');
SELECT sor.enqueue('x', 'abs(integer)', '{}');
SELECT sor.enqueue('x', 'two_args(jsonb, jsonb)', '{}');
SELECT sor.enqueue('x', 'returns_set(jsonb)', '{}');
SELECT sor.enqueue('x', 'a_procedure(jsonb)', '{}');
SET ROLE queue_user;
SELECT sor.enqueue('x', 'secret_handler(jsonb)', '{}');
SELECT sor.retry('f');
SELECT sor.skip(1);
RESET ROLE;
SELECT sor.drain(-1);
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT sor.drain();
ROLLBACK;
SELECT sor.retry(NULL);
SELECT sor.retry('');
SELECT sor.retry('no_such_group');
SELECT sor.skip(NULL);
SELECT sor.skip(999999);
SELECT count(*) AS waiting FROM sor.command;

-- A VACUUM that finds the queue empty leaves its pages counted with no
-- rows in them; a burst of commands afterwards is still read through the
-- (group_key, id) index, not by reading a whole index for each group.
SELECT count(sor.enqueue('burst' || (i % 10), 'log_cmd(jsonb)', '{}'))
  FROM generate_series(1, 2000) i;
DELETE FROM sor.command WHERE group_key LIKE 'burst%';
VACUUM (TRUNCATE false) sor.command;
SELECT relpages > 0 AS has_pages, reltuples AS rows_counted
  FROM pg_class WHERE oid = 'sor.command'::regclass;
SELECT count(sor.enqueue('burst' || (i % 10), 'log_cmd(jsonb)', '{}'))
  FROM generate_series(1, 2000) i;
EXPLAIN (COSTS OFF)
SELECT id FROM sor.command
 WHERE group_key = 'burst1'
   AND id > (SELECT g.done_through FROM sor.command_group g
              WHERE g.group_key = 'burst1')
 ORDER BY id LIMIT 100;
EXPLAIN (COSTS OFF)
SELECT g.group_key FROM sor.command_group g
 WHERE g.parked_at IS NULL
   AND EXISTS (SELECT FROM sor.command c
                WHERE c.group_key = g.group_key AND c.id > g.done_through)
 ORDER BY g.next_attempt_at, g.group_key LIMIT 64;
DELETE FROM sor.command WHERE group_key LIKE 'burst%';
DELETE FROM sor.command_group WHERE group_key LIKE 'burst%';

-- the queue tables are not for ordinary roles
SET ROLE queue_user;
SELECT count(*) FROM sor.command;
INSERT INTO sor.command_group (group_key) VALUES ('x');
SELECT group_key FROM sor.queue;
RESET ROLE;

DROP TABLE cmd_log, flaky_switch, guarded, deferred_log, child, parent;
DROP FUNCTION note_deferred(), insert_deferred(jsonb), make_temp(jsonb), log_app(jsonb),
    child_first(jsonb);
DROP FUNCTION log_cmd(jsonb), flaky(jsonb), write_guarded(jsonb),
    two_args(jsonb, jsonb), returns_set(jsonb), secret_handler(jsonb);
DROP PROCEDURE a_procedure(jsonb);
REVOKE TEMPORARY ON DATABASE contrib_regression FROM queue_user;
DROP ROLE queue_user, queue_other;
