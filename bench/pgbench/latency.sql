-- Latency probe (part 3): one command per transaction, in autocommit (the
-- commit follows in the same round trip).  t0 names the command; t1 is
-- taken after sor.enqueue() has returned, just before the commit.
WITH p AS (SELECT clock_timestamp() AS t0),
e AS (SELECT sor.enqueue('probe', 'bench_lat(jsonb)'::regprocedure,
                         jsonb_build_object('t0', t0)) AS id FROM p)
INSERT INTO bench_sent (t0, t1) SELECT t0, clock_timestamp() FROM p, e;
