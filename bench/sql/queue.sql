-- bench/sql/queue.sql: the queue benchmarks' database (run once, as the
-- superuser, who also enqueues): handlers, the plain-SQL baseline queue,
-- and the helpers that fill queues and check order and exactly-once.

CREATE EXTENSION sor;

-- One row per group: how many of its commands ran, the last sequence
-- number seen, how many arrived out of order, what was expected, and when
-- the first and last ran (the drain's duration); and, in the group that
-- ran it, when the drain's mark-th command ended (mark 0: not stamped), to
-- time the first commands of a drain (bench_rate_first()).
CREATE TABLE bench_counter (
    grp         text COLLATE "C" PRIMARY KEY,
    n           bigint NOT NULL DEFAULT 0,
    last_seq    bigint NOT NULL DEFAULT 0,
    bad         bigint NOT NULL DEFAULT 0,
    expected    bigint NOT NULL,
    max_seq     bigint NOT NULL,
    first_at    timestamptz,
    last_at     timestamptz,
    mark        bigint NOT NULL DEFAULT 0,
    mark_at     timestamptz
);
-- Its hundred rows are updated a million times in a drain, faster than
-- autovacuum cleans them up, so the table grows to hundreds of pages while
-- the handlers' cached plans were made when it had one, and a plan made
-- then scans the table whole: in one run the 1M-command drain went from
-- 4,000 to 40,000 commands/s when autovacuum replaced that plan.  Without
-- statistics (bench_reset truncates the table) the planner reaches a row by
-- its primary key, which is what the benchmark means to measure.
ALTER TABLE bench_counter SET (autovacuum_enabled = off);

-- The handler of the drain benchmarks, for sor and for the baseline:
-- updates its group's counter row and checks the order.
CREATE FUNCTION bench_handler(p jsonb) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    seq bigint := (p->>'seq')::bigint;
BEGIN
    UPDATE bench_counter
       SET n = n + 1, bad = bad + (seq <= last_seq)::int, last_seq = seq,
           first_at = coalesce(first_at, clock_timestamp()),
           last_at = clock_timestamp(),
           mark_at = CASE WHEN mark = 0 THEN mark_at
                          WHEN nextval('bench_done') = mark THEN clock_timestamp()
                          ELSE mark_at END
     WHERE grp = p->>'g';
END
$$;

-- Background work (enqueue throughput, latency load, steady flow): one
-- counter update per command.
CREATE TABLE bench_load (grp text COLLATE "C" PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
INSERT INTO bench_load (grp) SELECT 'f' || i FROM generate_series(0, 9999) i;
CREATE FUNCTION bench_count(p jsonb) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    UPDATE bench_load SET n = n + 1 WHERE grp = p->>'g';
END
$$;

-- The latency probe: the command's name (t0) and when its handler started;
-- and, written by the enqueuing transaction, when sor.enqueue() had
-- returned (t1, just before the commit).
CREATE TABLE bench_latency (t0 timestamptz NOT NULL, started timestamptz NOT NULL);
CREATE TABLE bench_sent (t0 timestamptz PRIMARY KEY, t1 timestamptz NOT NULL);
CREATE FUNCTION bench_lat(p jsonb) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_latency VALUES ((p->>'t0')::timestamptz, clock_timestamp());
END
$$;
-- pgbench's per-transaction log of the probe (-l; with --rate, 7 fields)
CREATE TABLE bench_ack (client int, tx bigint, latency_us bigint, script int,
                        epoch_s bigint, epoch_us bigint, lag_us bigint);

-- The baseline: a plain queue table, consumed by pgbench/consume.sql.
CREATE TABLE bench_queue (
    id          bigserial PRIMARY KEY,
    group_key   text COLLATE "C" NOT NULL,
    payload     jsonb NOT NULL
);
CREATE INDEX ON bench_queue (group_key, id);

-- Commands run by the handler while a mark is set.
CREATE SEQUENCE bench_done;

-- Expected counts for commands 1..total over groups 'g0'..: command i is
-- for group i % groups, with sequence number i.  The drain's mark-th
-- command stamps its end (see bench_rate_first()).
CREATE PROCEDURE bench_reset(total bigint, groups int, mark bigint DEFAULT 0)
    LANGUAGE sql AS $$
    TRUNCATE bench_counter;
    ALTER SEQUENCE bench_done RESTART;
    INSERT INTO bench_counter (grp, expected, max_seq, mark)
    SELECT 'g' || (i % groups), count(*), max(i), bench_reset.mark
      FROM generate_series(1, total) i GROUP BY 1;
$$;

-- Fill sor's queue (sys = 'sor') or the baseline's with commands
-- first..last, per_tx commands per transaction, in order of i.
CREATE PROCEDURE bench_fill(sys text, first bigint, last bigint, groups int,
                            per_tx int)
    LANGUAGE plpgsql AS $$
DECLARE
    lo bigint := first;
BEGIN
    WHILE lo <= last LOOP
        IF sys = 'sor' THEN
            PERFORM sor.enqueue('g' || (i % groups), 'bench_handler(jsonb)'::regprocedure,
                                jsonb_build_object('g', 'g' || (i % groups), 'seq', i))
               FROM generate_series(lo, least(lo + per_tx - 1, last)) i;
        ELSE
            INSERT INTO bench_queue (group_key, payload)
            SELECT 'g' || (i % groups), jsonb_build_object('g', 'g' || (i % groups), 'seq', i)
              FROM generate_series(lo, least(lo + per_tx - 1, last)) i ORDER BY i;
        END IF;
        COMMIT;
        lo := lo + per_tx;
    END LOOP;
END
$$;

-- After a drain (complete or stopped early): 'ok' if every group ran
-- exactly the commands that left its queue, in order; else what is wrong.
CREATE FUNCTION bench_check(sys text) RETURNS text
    LANGUAGE sql AS $$
    WITH waiting AS (
        SELECT group_key AS grp, count(*) AS n FROM sor.command
         WHERE sys = 'sor' GROUP BY 1
        UNION ALL
        SELECT group_key, count(*) FROM bench_queue WHERE sys <> 'sor' GROUP BY 1),
    judged AS (
        SELECT c.grp, c.bad > 0 AS disorder,
               c.n <> c.expected - coalesce(w.n, 0) AS miscount,
               w.n IS NULL AND c.last_seq <> c.max_seq AS wrong_last
          FROM bench_counter c LEFT JOIN waiting w USING (grp))
    SELECT CASE WHEN count(*) FILTER (WHERE disorder OR miscount OR wrong_last) = 0 THEN 'ok'
                ELSE format('%s groups out of order, %s miscounted, %s with a wrong last command',
                            count(*) FILTER (WHERE disorder), count(*) FILTER (WHERE miscount),
                            count(*) FILTER (WHERE wrong_last)) END
      FROM judged;
$$;

-- Commands per second of the last drain, from the handlers' clocks: the
-- commands that ran over the time from the first one's start to the last
-- one's end (0 if none ran).
CREATE FUNCTION bench_rate() RETURNS numeric
    LANGUAGE sql AS $$
    SELECT coalesce(round(sum(n) / nullif(extract(epoch FROM max(last_at) - min(first_at)), 0)), 0)
      FROM bench_counter;
$$;

-- Commands per second of the first mark commands of the last drain, from
-- the first one's start to the end of the mark-th (0 if it did not run):
-- of a queue that holds many more, the drain rate at that backlog.
CREATE FUNCTION bench_rate_first() RETURNS numeric
    LANGUAGE sql AS $$
    SELECT coalesce(round(max(mark) / nullif(extract(epoch FROM max(mark_at) - min(first_at)), 0)), 0)
      FROM bench_counter WHERE mark > 0;
$$;

-- Sizes of sor's queue tables (bytes).
CREATE FUNCTION bench_sizes(OUT rel text, OUT total bigint, OUT heap bigint,
                            OUT indexes bigint) RETURNS SETOF record
    LANGUAGE sql AS $$
    SELECT c::text, pg_total_relation_size(c), pg_relation_size(c), pg_indexes_size(c)
      FROM unnest(ARRAY['sor.command'::regclass, 'sor.command_group'::regclass]) c;
$$;
