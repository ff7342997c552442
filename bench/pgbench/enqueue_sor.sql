-- Enqueue throughput (queue, part 2): one sor command per transaction.
\set g random(0, 9999)
SELECT sor.enqueue('f' || :g, 'bench_count(jsonb)'::regprocedure, jsonb_build_object('g', 'f' || :g));
