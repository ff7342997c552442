# bench/latency.sh: part 3, wake-up latency (sourced by bench/suite).
#
# A probe (pgbench, 1 client, --rate 50) enqueues one command per
# transaction, in autocommit (pgbench/latency.sql): the statement records
# t1 = clock_timestamp() after sor.enqueue() has returned, and the commit
# follows in the same round trip.  The handler records when it started.
# pgbench's per-transaction log (-l) says when each commit had returned to
# the client (t_ack).  The commit became visible between t1 and t_ack, so
#   started - t_ack  <=  latency from commit to handler start  <=  started - t1
# and both bounds are reported.  (Transactions are matched with the log by
# order: one client, one command each, one after the other.)  Idle: nothing else runs.  Load: a
# second pgbench enqueues ~1,000 commands/s (--rate 1000, 2 clients) for
# 1,000 other groups meanwhile.  Durable commits, 2 workers.

# latency_run MODE: MODE is idle or load.
latency_run() {
    local mode=$1 lpid="" tps
    sql queue -c "TRUNCATE bench_latency, bench_sent, bench_ack"
    if [ "$mode" = load ]; then
        "$bin/pgbench" -h "$sock" -p "$port" -n -M prepared -c 2 -j 2 -R 1000 \
            -T $((lat_secs + 2)) -f "$bench/pgbench/load.sql" queue >"$work/load.log" 2>&1 &
        lpid=$!
        sleep 1
    fi
    rm -f "$work/lat_$mode".*
    "$bin/pgbench" -h "$sock" -p "$port" -n -M prepared -c 1 -R 50 -T "$lat_secs" \
        -l --log-prefix="$work/lat_$mode" -f "$bench/pgbench/latency.sql" queue >/dev/null 2>&1 ||
        die "the latency probe failed"
    if [ -n "$lpid" ]; then
        wait "$lpid" || die "the background load failed: $(cat "$work/load.log")"
        tps=$(sed -n 's/^tps = \([0-9.]*\) (without.*/\1/p' "$work/load.log")
        record latency "$mode" "load rate" 1 "$tps" "cmds/s"
    fi
    wait_sor_empty || die "sor's queue did not drain"
    sql queue -c "\\copy bench_ack FROM '$(echo "$work/lat_$mode".*)' (DELIMITER ' ')"
    latency_figures "$mode"
    sql queue -c "\\copy (SELECT extract(epoch FROM started - t1) * 1000 FROM bench_latency JOIN bench_sent USING (t0) ORDER BY 1) TO '$out/latency_$mode.dat'"
}

# latency_figures MODE: percentiles of both bounds (ms), and the checks
# that every probe ran and that the clocks agree (t0 < t_ack).
latency_figures() {
    local mode=$1 name value
    while IFS='|' read -r name value; do
        if [ "$name" = check ]; then
            record check "latency $mode" probe 1 "${value%%:*}" "${value#*:}"
            [ "${value%%:*}" = 1 ] || log "  CHECK FAILED: latency $mode: ${value#*:}"
        else
            record latency "$mode" "$name" 1 "$value" ms
        fi
    done < <(sql queue <<'EOF'
WITH ack AS (
    SELECT row_number() OVER (ORDER BY tx) AS k,
           to_timestamp(epoch_s) + epoch_us * interval '1 microsecond' AS t_ack
      FROM bench_ack),
probe AS (
    SELECT row_number() OVER (ORDER BY t0) AS k, t1, started
      FROM bench_latency JOIN bench_sent USING (t0)),
both_ AS (
    SELECT extract(epoch FROM started - t_ack) * 1000 AS low,
           extract(epoch FROM started - t1) * 1000 AS high, t_ack > t1 AS sane
      FROM probe JOIN ack USING (k)),
figures AS (
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY low) AS p50_low,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY high) AS p50_high,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY low) AS p99_low,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY high) AS p99_high,
           max(high) AS max_high, count(*) AS n, bool_and(sane) AS sane
      FROM both_)
SELECT 'p50 lower', round(p50_low::numeric, 3)::text FROM figures
UNION ALL SELECT 'p50 upper', round(p50_high::numeric, 3)::text FROM figures
UNION ALL SELECT 'p99 lower', round(p99_low::numeric, 3)::text FROM figures
UNION ALL SELECT 'p99 upper', round(p99_high::numeric, 3)::text FROM figures
UNION ALL SELECT 'max upper', round(max_high::numeric, 3)::text FROM figures
UNION ALL SELECT 'samples', n::text FROM figures
UNION ALL
SELECT 'check',
       CASE WHEN n = (SELECT count(*) FROM bench_ack)
             AND n = (SELECT count(*) FROM bench_latency) AND sane THEN '1:ok'
            ELSE format('0:%s probes logged; %s ran; clocks agree: %s',
                        (SELECT count(*) FROM bench_ack),
                        (SELECT count(*) FROM bench_latency), sane) END
  FROM figures;
EOF
)
}

run_latency() {
    log "latency: idle, then under load"
    # Idle means idle: the backlog part leaves a million dead rows in the
    # queue, and the autovacuum of them (with its WAL, on 2 cores) would
    # run beside the probe.  So they are vacuumed first, and the probe
    # waits until no autovacuum runs.
    queue_clean
    poll_until 600 postgres "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'autovacuum worker');" ||
        log "  autovacuum still running after 600 s"
    latency_run idle
    latency_run load
}
