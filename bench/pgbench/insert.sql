-- Single-row INSERT of a random key (enforcement, part 1).
\set k random(1, :n)
INSERT INTO ins (id, owner, v) VALUES (:k, 'a', 1);
