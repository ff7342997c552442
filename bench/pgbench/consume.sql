-- The baseline consumer (queue, part 2): one command per transaction.  Of
-- the commands in id order, take the first that is the oldest of its group
-- and whose group no other consumer holds (a transaction-level advisory
-- lock per group), lock it (FOR UPDATE SKIP LOCKED), run the same handler
-- as sor's workers, delete it, commit.
WITH next AS (
    SELECT q.id, q.payload
      FROM bench_queue q
     WHERE CASE WHEN q.id = (SELECT min(h.id) FROM bench_queue h
                              WHERE h.group_key = q.group_key)
                THEN pg_try_advisory_xact_lock(hashtext(q.group_key))
                ELSE false END
     ORDER BY q.id
     LIMIT 1
       FOR UPDATE SKIP LOCKED),
ran AS (
    SELECT id, bench_handler(payload) FROM next)
DELETE FROM bench_queue q USING ran WHERE q.id = ran.id;
