# bench/queue.sh: part 2, queue throughput (sourced by bench/suite).
#
# Database "queue", durable commits (synchronous_commit = on, the default).
# Handler: bench_handler(jsonb) (sql/queue.sql), one counter row update per
# command, which also checks the order.  Every drain starts from a full
# queue, in the same state (queue_clean): sor's is filled while its workers
# are stopped (sor.workers = 0), $per_tx commands per transaction, then the
# workers are started (2 per database); the baseline's table is filled the
# same way, then drained by pgbench clients running pgbench/consume.sql.  A drain's rate is measured
# by the handlers' own clocks (first start to last end); the shell polls,
# in short transactions, until the queue is empty, or stops the drain
# after $cap seconds (the rate then covers what ran).  Order and
# exactly-once are checked after every drain (bench_check).

per_tx=100

queue_setup() {
    sql postgres -c "CREATE DATABASE queue"
    sql queue -f "$bench/sql/queue.sql" >/dev/null
}

# check_drain LABEL SYS: record the order/exactly-once check of a drain
# (value 1 when it passed, 0 and what is wrong when not).
check_drain() {
    local label=$1 sys=$2 verdict
    verdict=$(sql queue -c "SELECT bench_check('$sys')")
    if [ "$verdict" = ok ]; then
        record check "$label" "$sys" 1 1 ok
    else
        record check "$label" "$sys" 1 0 "${verdict//,/;}"
        log "  CHECK FAILED: $label, $sys: $verdict"
    fi
}

wait_sor_empty() {
    poll_until "${1:-600}" queue "SELECT NOT EXISTS (SELECT FROM sor.command);"
}

# queue_clean: the starting state of every drain: sor's groups without
# commands forgotten now (what idle workers do, 1,000 groups per idle
# wake-up), and the queue tables of both sides vacuumed.
queue_clean() {
    sql queue -c "SELECT sor.forget_empty_groups($((1 << 30)))" \
        -c "VACUUM sor.command, sor.command_group, bench_queue" >/dev/null
}

# fill_sor GROUPS TOTAL PER_TX [MARK]: sor's queue, filled with the
# workers stopped; the drain's MARK-th command stamps its end.
fill_sor() {
    set_workers 0
    queue_clean
    sql queue -c "CALL bench_reset($2, $1, ${4:-0})" -c "CALL bench_fill('sor', 1, $2, $1, $3)"
}

# drain_sor GROUPS TOTAL PER_TX LABEL [MARK]: prints the rate (with MARK,
# that of the first MARK commands); leaves the workers running and the
# queue empty.
drain_sor() {
    local label=$4 rate
    fill_sor "$1" "$2" "$3" "${5:-0}"
    set_workers 2
    wait_sor_empty "$cap" || log "  sor stopped after ${cap}s ($label)"
    if [ -n "${5:-}" ]; then
        rate=$(sql queue -c "SELECT bench_rate_first()")
    else
        rate=$(sql queue -c "SELECT bench_rate()")
    fi
    check_drain "$label" sor
    wait_sor_empty || die "sor's queue did not drain"
    echo "$rate"
}

# drain_sql GROUPS TOTAL CONSUMERS LABEL: the baseline; prints the rate.
drain_sql() {
    local groups=$1 total=$2 consumers=$3 label=$4 pid rate
    queue_clean
    sql queue -c "CALL bench_reset($total, $groups)" \
        -c "CALL bench_fill('sql', 1, $total, $groups, $per_tx)"
    "$bin/pgbench" -h "$sock" -p "$port" -n -M prepared -c "$consumers" -j "$consumers" \
        -T $((cap + 60)) -f "$bench/pgbench/consume.sql" queue >"$work/consume.log" 2>&1 &
    pid=$!
    poll_until "$cap" queue "SELECT NOT EXISTS (SELECT FROM bench_queue);" ||
        log "  baseline stopped after ${cap}s ($label)"
    kill -TERM "$pid"
    wait "$pid" || true
    rate=$(sql queue -c "SELECT bench_rate()")
    check_drain "$label" "sql$consumers"
    sql queue -c "DELETE FROM bench_queue"
    echo "$rate"
}

# Drain $drain_total commands for each group count, sor and the baseline
# alternating; with 1 group also one consumer alone (one command per
# commit, no contention: the ceiling of a per-command-commit consumer).
queue_drain() {
    local groups r v rate line label
    for groups in "${drain_groups[@]}"; do
        label="$groups groups"
        [ "$groups" = 1 ] && label="1 group"
        for ((r = 1; r <= queue_rounds; r++)); do
            line="  drain, $label, round $r:"
            for v in $(rotate 2 "$r" sor sql); do
                if [ "$v" = sor ]; then
                    rate=$(drain_sor "$groups" "$drain_total" "$per_tx" "$label")
                else
                    rate=$(drain_sql "$groups" "$drain_total" 2 "$label")
                fi
                record drain "$label" "$v" "$r" "$rate" "cmds/s"
                line+=" $v $rate/s"
            done
            if [ "$groups" = 1 ]; then
                rate=$(drain_sql 1 "$drain_total" 1 "$label")
                record drain "$label" sql_1consumer "$r" "$rate" "cmds/s"
                line+=" sql_1consumer $rate/s"
            fi
            log "$line"
        done
    done
}

# The queue filled by one transaction: every group row then has the same
# next_attempt_at (see doc/benchmarks.md).  sor only, once, timed by the
# wall clock from the workers' start to the empty queue (the first handler
# may start late); also records when the first handler started.
queue_drain_one_transaction() {
    local groups=${drain_groups[-1]} label start us
    label="$groups groups, one transaction"
    fill_sor "$groups" "$drain_total" "$drain_total"
    start=${EPOCHREALTIME/./}
    set_workers 2
    wait_sor_empty 900 || die "sor's queue did not drain"
    us=$((${EPOCHREALTIME/./} - start))
    check_drain "$label" sor
    record drain "$label" sor 1 $((drain_total * 1000000 / us)) "cmds/s"
    record drain_start "$label" sor 1 \
        "$(sql queue -c "SELECT round(extract(epoch FROM min(first_at)) - $start / 1e6, 3) FROM bench_counter")" s
    log "  drain, $label: sor $((drain_total * 1000000 / us))/s (wall clock)"
}

# Enqueue throughput: one command per transaction, 2 and 8 clients, with
# the workers stopped; the baseline inserts into its queue table.
queue_enqueue() {
    local clients r v tps line
    set_workers 0
    for clients in 2 8; do
        for ((r = 1; r <= queue_rounds; r++)); do
            line="  enqueue, $clients clients, round $r:"
            for v in $(rotate 2 "$r" sor sql); do
                tps=$(pgbench_tps postgres queue -M prepared -c "$clients" -j 2 -T "$secs" \
                    -f "$bench/pgbench/enqueue_$v.sql")
                record enqueue "$clients clients" "$v" "$r" "$tps" tps
                line+=" $v $tps"
            done
            log "$line"
        done
    done
    set_workers 2
    wait_sor_empty || die "sor's queue did not drain"
    sql queue -c "DELETE FROM bench_queue"
}

# Drain rate with a small and a large backlog (100 groups: full batches in
# both); sizes of sor's tables with the large backlog waiting and drained.
# Both are timed up to the end of their $backlog_small-th command (the
# handler counts with a sequence): for the large backlog that is the drain
# rate while the rest still waits (part backlog_first: the rate at that
# backlog); the large backlog's whole drain is recorded too (part backlog).
queue_backlog() {
    local r rate first
    for ((r = 1; r <= queue_rounds; r++)); do
        rate=$(drain_sor 100 "$backlog_small" "$per_tx" "backlog $backlog_small" "$backlog_small")
        record backlog "$backlog_small" sor "$r" "$rate" "cmds/s"
        log "  backlog $backlog_small, round $r: sor $rate/s"
    done
    fill_sor 100 "$backlog_large" "$per_tx" "$backlog_small"
    record_sizes "backlog $backlog_large: waiting"
    set_workers 2
    wait_sor_empty 1800 || die "sor's queue did not drain"
    rate=$(sql queue -c "SELECT bench_rate()")
    first=$(sql queue -c "SELECT bench_rate_first()")
    check_drain "backlog $backlog_large" sor
    record backlog "$backlog_large" sor 1 "$rate" "cmds/s"
    record backlog_first "$backlog_large" sor 1 "$first" "cmds/s"
    record_sizes "backlog $backlog_large: drained"
    log "  backlog $backlog_large: sor $rate/s, its first $backlog_small: $first/s"
}

# record_sizes STAGE: sizes of sor.command and sor.command_group.
record_sizes() {
    local stage=$1 rel total heap indexes
    while IFS='|' read -r rel total heap indexes; do
        record size "$stage" "$rel total" 1 "$total" bytes
        record size "$stage" "$rel heap" 1 "$heap" bytes
        record size "$stage" "$rel indexes" 1 "$indexes" bytes
    done < <(sql queue -c "SELECT * FROM bench_sizes()")
}

run_queue() {
    queue_setup
    log "queue: drain of $drain_total commands"
    queue_drain
    [ "$mode" = full ] && queue_drain_one_transaction
    log "queue: enqueue"
    queue_enqueue
    log "queue: backlog"
    queue_backlog
}
