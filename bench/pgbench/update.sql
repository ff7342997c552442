-- Single-row UPDATE by random key (enforcement, part 1).
\set k random(1, :n)
UPDATE upd SET v = v + 1 WHERE id = :k;
