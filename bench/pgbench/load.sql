-- Background load (latency, part 3): one command per transaction for one
-- of 1,000 groups.
\set g random(0, 999)
SELECT sor.enqueue('f' || :g, 'bench_count(jsonb)'::regprocedure,
                   jsonb_build_object('g', 'f' || :g));
