-- Enqueue throughput, baseline (queue, part 2): one plain INSERT per
-- transaction into the baseline's queue table.
\set g random(0, 9999)
INSERT INTO bench_queue (group_key, payload) VALUES ('f' || :g, jsonb_build_object('g', 'f' || :g));
