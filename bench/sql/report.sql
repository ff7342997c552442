-- bench/sql/report.sql: the results as markdown tables (psql -At).  Reads
-- bench_raw (raw.csv: one row per measurement and round) and writes
-- medians, ratios and the goals.  Expects the psql variable mode (quick or
-- full): goals are judged in full mode only.

SELECT set_config('bench.mode', :'mode', false) \g /dev/null

CREATE VIEW med AS
    SELECT part, case_, variant, unit, count(*) AS n,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY value) AS median,
           min(value) AS min, max(value) AS max
      FROM bench_raw WHERE part <> 'check'
     GROUP BY part, case_, variant, unit;

CREATE FUNCTION num(x double precision) RETURNS text
    LANGUAGE sql AS $$
    SELECT CASE WHEN x IS NULL THEN 'n/a'
                WHEN abs(x) >= 100 THEN to_char(round(x), 'FM999,999,999,999')
                ELSE to_char(x, 'FM990.00') END
$$;

CREATE FUNCTION ratio(x double precision, y double precision) RETURNS text
    LANGUAGE sql AS $$
    SELECT CASE WHEN x IS NULL OR y IS NULL OR y = 0 THEN 'n/a'
                ELSE to_char(x / y, 'FM990.000') END
$$;

-- PL/pgSQL's overhead over sor's, per operation (1/rate - 1/limit).
CREATE FUNCTION overhead(plain double precision, s double precision,
                                 p double precision) RETURNS double precision
    LANGUAGE sql AS $$
    SELECT CASE WHEN 1 / s - 1 / plain > 0
                THEN (1 / p - 1 / plain) / (1 / s - 1 / plain) END
$$;

CREATE FUNCTION verdict(met boolean) RETURNS text
    LANGUAGE sql AS $$
    SELECT CASE WHEN current_setting('bench.mode') <> 'full' THEN '(quick run: not judged)'
                WHEN met IS NULL THEN 'n/a'
                WHEN met THEN 'met' ELSE '**not met**' END
$$;

-- enforcement figures side by side, per scenario and workload
CREATE VIEW enforcement AS
    SELECT part, split_part(case_, '/', 1) AS scenario,
           split_part(case_, '/', 2) AS workload,
           max(median) FILTER (WHERE variant = 'plain') AS plain,
           max(median) FILTER (WHERE variant = 'sor') AS sor,
           max(median) FILTER (WHERE variant = 'plpgsql') AS plpgsql,
           max(median) FILTER (WHERE variant = 'rls') AS rls,
           max(median) FILTER (WHERE variant = 'noop') AS noop,
           min(n) AS rounds
      FROM med WHERE part IN ('enforce_row', 'enforce_bulk')
     GROUP BY part, case_;

CREATE VIEW drain AS
    SELECT case_ AS groups,
           max(median) FILTER (WHERE variant = 'sor') AS sor,
           max(median) FILTER (WHERE variant = 'sql') AS sql,
           max(median) FILTER (WHERE variant = 'sql_1consumer') AS ceiling,
           min(n) AS rounds
      FROM med WHERE part = 'drain' GROUP BY case_;

CREATE VIEW latency AS
    SELECT case_ AS queue,
           max(median) FILTER (WHERE variant = 'p50 lower') AS p50_low,
           max(median) FILTER (WHERE variant = 'p50 upper') AS p50_high,
           max(median) FILTER (WHERE variant = 'p99 lower') AS p99_low,
           max(median) FILTER (WHERE variant = 'p99 upper') AS p99_high,
           max(median) FILTER (WHERE variant = 'max upper') AS max_high,
           max(median) FILTER (WHERE variant = 'samples') AS samples,
           max(median) FILTER (WHERE variant = 'load rate') AS load_rate
      FROM med WHERE part = 'latency' GROUP BY case_;

-- goals: what, measured, met
CREATE VIEW goals AS
    SELECT format('%s, %s: sor ≥ %s of unregistered', scenario, workload,
                  CASE part WHEN 'enforce_row' THEN '0.97' ELSE '0.90' END) AS goal,
           ratio(sor, plain) AS measured,
           sor / plain >= CASE part WHEN 'enforce_row' THEN 0.97 ELSE 0.90 END AS met,
           1 AS ord, scenario, workload
      FROM enforcement
    UNION ALL
    SELECT format('%s, %s: PL/pgSQL overhead ≥ 5 × sor''s', scenario, workload),
           coalesce(num(overhead(plain, sor, plpgsql)), 'sor overhead ≤ 0'),
           coalesce(overhead(plain, sor, plpgsql) >= 5, sor >= plain),
           2, scenario, workload
      FROM enforcement WHERE plpgsql IS NOT NULL
    UNION ALL
    SELECT format('drain, %s: sor ≥ 2 × baseline', groups), ratio(sor, sql),
           sor / sql >= 2, 3, groups, ''
      FROM drain WHERE groups IN ('100 groups', '10000 groups')
    UNION ALL
    SELECT 'drain, 1 group: sor ≥ one command per commit (1 consumer)',
           ratio(sor, ceiling), sor >= ceiling, 4, groups, ''
      FROM drain WHERE groups = '1 group'
    UNION ALL
    SELECT 'backlog: drain rate drops ≤ 20% from small to large backlog',
           to_char(100 * (1 - l.median / s.median), 'FM990.0') || '% drop',
           l.median >= 0.8 * s.median, 5, '', ''
      FROM med s JOIN med l ON l.part = 'backlog_first' AND s.part = 'backlog'
       AND s.case_::bigint < l.case_::bigint
    UNION ALL
    SELECT 'latency idle: p50 ≤ 1 ms', format('%s–%s ms', num(p50_low), num(p50_high)),
           CASE WHEN p50_high <= 1 THEN true WHEN p50_low > 1 THEN false END, 6, '', ''
      FROM latency WHERE queue = 'idle'
    UNION ALL
    SELECT 'latency idle: p99 ≤ 5 ms', format('%s–%s ms', num(p99_low), num(p99_high)),
           CASE WHEN p99_high <= 5 THEN true WHEN p99_low > 5 THEN false END, 7, '', ''
      FROM latency WHERE queue = 'idle'
    UNION ALL
    SELECT 'latency under load: p99 ≤ 20 ms', format('%s–%s ms', num(p99_low), num(p99_high)),
           CASE WHEN p99_high <= 20 THEN true WHEN p99_low > 20 THEN false END, 8, '', ''
      FROM latency WHERE queue = 'load'
    UNION ALL
    SELECT 'idle workers: no measurable CPU',
           format('%s ms CPU in total', sum(median)), sum(median) = 0, 9, '', ''
      FROM med WHERE part = 'idle' AND variant = 'cpu ms';

SELECT '## Enforcement: single-row writes (pgbench TPS, 2 clients, median of rounds)';
SELECT '';
SELECT '| scenario | workload | unregistered | sor | PL/pgSQL | RLS | no-op trigger | sor ratio | PL/pgSQL ratio | RLS ratio | no-op trigger ratio | overhead PL/pgSQL ÷ sor | rounds |';
SELECT '|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|';
SELECT format('| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |', scenario, workload,
              num(plain), num(sor), num(plpgsql), num(rls), num(noop),
              ratio(sor, plain), ratio(plpgsql, plain), ratio(rls, plain), ratio(noop, plain),
              CASE WHEN plpgsql IS NULL THEN 'n/a'
                   ELSE coalesce(num(overhead(plain, sor, plpgsql)), 'n/a (sor ≤ 0)') END, rounds)
  FROM enforcement WHERE part = 'enforce_row' ORDER BY scenario, workload DESC;
SELECT '';
SELECT '## Enforcement: bulk writes (rows/s, median of rounds)';
SELECT '';
SELECT '| scenario | workload | unregistered | sor | PL/pgSQL | RLS | no-op trigger | sor ratio | PL/pgSQL ratio | RLS ratio | no-op trigger ratio | overhead PL/pgSQL ÷ sor | rounds |';
SELECT '|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|';
SELECT format('| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |', scenario, workload,
              num(plain), num(sor), num(plpgsql),
              coalesce(num(rls), 'n/a'), num(noop),
              ratio(sor, plain), ratio(plpgsql, plain), ratio(rls, plain), ratio(noop, plain),
              coalesce(num(overhead(plain, sor, plpgsql)), 'n/a (sor ≤ 0)'), rounds)
  FROM enforcement WHERE part = 'enforce_bulk' ORDER BY scenario, workload DESC;
SELECT '';
SELECT 'RLS has no COPY figure: PostgreSQL refuses COPY FROM into a table with row-level security.';
SELECT '';
SELECT 'The no-op trigger is a C BEFORE ROW trigger that does nothing (bench/noop): the cost of any row trigger, and so the floor of sor''s design.';
SELECT '';
SELECT 'A scenario named *_prewarmed is the largest one again, with sor''s shared ownership cache sized for all its entries and filled by sor.prewarm_shared_cache() (unregistered, sor and the no-op trigger only: the others do not read that cache).';
SELECT '';
SELECT '| scenario | ownership entries made by (or put into the shared cache by prewarm) | entries/s |';
SELECT '|---|---|--:|';
SELECT format('| %s | %s | %s |', case_, variant, num(median))
  FROM med WHERE part = 'setup' ORDER BY case_;
SELECT '';
SELECT '## Queue: drain of a full queue (commands/s, 2 workers vs 2 baseline consumers)';
SELECT '';
SELECT '| groups | sor | baseline | sor ÷ baseline | 1 consumer, 1 commit per command | sor ÷ that | rounds |';
SELECT '|---|--:|--:|--:|--:|--:|--:|';
SELECT format('| %s | %s | %s | %s | %s | %s | %s |', groups, num(sor), num(sql),
              ratio(sor, sql), coalesce(num(ceiling), ''),
              CASE WHEN ceiling IS NOT NULL THEN ratio(sor, ceiling) ELSE '' END, rounds)
  FROM drain ORDER BY split_part(groups, ' ', 1)::int, length(groups);
SELECT '';
SELECT format('"%s" is timed by the wall clock, from the start of the workers to the empty queue: its first command started %s s after the workers.',
              case_, median)
  FROM med WHERE part = 'drain_start';
SELECT '';
SELECT '## Queue: enqueue, one command per transaction (TPS)';
SELECT '';
SELECT '| producers | sor.enqueue | plain INSERT | ratio | rounds |';
SELECT '|---|--:|--:|--:|--:|';
SELECT format('| %s | %s | %s | %s | %s |', case_,
              num(max(median) FILTER (WHERE variant = 'sor')),
              num(max(median) FILTER (WHERE variant = 'sql')),
              ratio(max(median) FILTER (WHERE variant = 'sor'),
                            max(median) FILTER (WHERE variant = 'sql')), min(n))
  FROM med WHERE part = 'enqueue' GROUP BY case_ ORDER BY split_part(case_, ' ', 1)::int;
SELECT '';
SELECT '## Queue: drain rate by backlog (100 groups, commands/s)';
SELECT '';
SELECT '| backlog | sor: its first commands | sor: its whole drain | rounds |';
SELECT '|--:|--:|--:|--:|';
SELECT format('| %s | %s | %s | %s |', num(b.case_::bigint),
              num(coalesce(f.median, b.median)), num(b.median), b.n)
  FROM med b LEFT JOIN med f ON f.part = 'backlog_first' AND f.case_ = b.case_
 WHERE b.part = 'backlog' ORDER BY b.case_::bigint;
SELECT '';
SELECT 'The first commands of a backlog are as many as the small backlog holds (the whole of it), timed the same way: the drain rate at that backlog. The goal compares those.';
SELECT '';
SELECT '## Latency: commit of an enqueue to the start of its handler (ms)';
SELECT '';
SELECT 'Each figure is a range: lower bound (from when the commit had returned to the client) – upper bound (from just before the commit).';
SELECT '';
SELECT '| queue | samples | p50 | p99 | max (upper) | background load |';
SELECT '|---|--:|--:|--:|--:|--:|';
SELECT format('| %s | %s | %s–%s | %s–%s | %s | %s |', queue, samples,
              num(p50_low), num(p50_high), num(p99_low),
              num(p99_high), num(max_high),
              CASE WHEN load_rate IS NULL THEN 'none' ELSE num(load_rate) || ' cmds/s' END)
  FROM latency ORDER BY queue;
SELECT '';
SELECT '## Queue tables: sizes (MB)';
SELECT '';
SELECT '| stage | sor.command total | heap | indexes | sor.command_group total | heap | indexes |';
SELECT '|---|--:|--:|--:|--:|--:|--:|';
SELECT format('| %s | %s | %s | %s | %s | %s | %s |', case_,
              to_char(max(value) FILTER (WHERE variant = 'sor.command total') / 1048576.0, 'FM99990.00'),
              to_char(max(value) FILTER (WHERE variant = 'sor.command heap') / 1048576.0, 'FM99990.00'),
              to_char(max(value) FILTER (WHERE variant = 'sor.command indexes') / 1048576.0, 'FM99990.00'),
              to_char(max(value) FILTER (WHERE variant = 'sor.command_group total') / 1048576.0, 'FM99990.00'),
              to_char(max(value) FILTER (WHERE variant = 'sor.command_group heap') / 1048576.0, 'FM99990.00'),
              to_char(max(value) FILTER (WHERE variant = 'sor.command_group indexes') / 1048576.0, 'FM99990.00'))
  FROM bench_raw WHERE part = 'size' GROUP BY case_ ORDER BY min(seq);
SELECT '';
SELECT format('Steady flow: enqueued at %s commands/s while the workers drained.', num(median))
  FROM med WHERE part = 'flow';
SELECT '';
SELECT '## Idle cost (queue empty, workers running)';
SELECT '';
SELECT '| process | CPU ms | context switches |';
SELECT '|---|--:|--:|';
SELECT format('| %s | %s | %s |', case_,
              max(median) FILTER (WHERE variant = 'cpu ms'),
              max(median) FILTER (WHERE variant = 'context switches'))
  FROM med WHERE part = 'idle' GROUP BY case_ ORDER BY case_;
SELECT '';
SELECT format('While part 1 ran (%s s of writes, DDL and ownership changes in database enforce, no commands), '
              'the %s workers of that database used %s ms of CPU in total and switched context %s times.',
              (SELECT median FROM med WHERE part = 'busy_db' AND variant = 'duration'),
              count(*) FILTER (WHERE variant = 'cpu ms'),
              sum(median) FILTER (WHERE variant = 'cpu ms'),
              sum(median) FILTER (WHERE variant = 'context switches'))
  FROM med WHERE part = 'busy_db' AND variant <> 'duration';
SELECT '';
SELECT '## Goals';
SELECT '';
SELECT '| goal | measured | verdict |';
SELECT '|---|--:|---|';
SELECT format('| %s | %s | %s |', goal, measured, verdict(met))
  FROM goals ORDER BY ord, scenario, workload DESC;
SELECT '';
SELECT '## Checks';
SELECT '';
SELECT format('%s of %s checks passed (order and exactly-once after every drain, every probe ran, foreign writes refused).',
              count(*) FILTER (WHERE value = 1), count(*))
  FROM bench_raw WHERE part = 'check';
SELECT format('- FAILED: %s, %s: %s', case_, variant, unit)
  FROM bench_raw WHERE part = 'check' AND value <> 1 ORDER BY seq;
