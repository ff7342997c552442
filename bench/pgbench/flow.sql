-- Steady flow (bloat, part 4): 100 commands per transaction, for groups of
-- the client's own 500 (two clients never wait for each other's producer
-- locks, nor deadlock on them), while the workers drain.
\set base :client_id * 500
SELECT count(sor.enqueue('f' || g, 'bench_count(jsonb)'::regprocedure,
                         jsonb_build_object('g', 'f' || g)))
  FROM (SELECT :base + (random() * 499)::int AS g FROM generate_series(1, 100)) s;
