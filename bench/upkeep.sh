# bench/upkeep.sh: part 4, bloat and idle cost (sourced by bench/suite).
#
# Steady flow: two pgbench clients enqueue $flow_total commands, 100 per
# transaction, for 1,000 groups, as fast as they can, while the 2 workers
# drain them.  Sizes of sor.command and sor.command_group (heap, indexes,
# total) before, once the queue is empty, and (full mode) once autovacuum
# has vacuumed sor.command after that.  Then the CPU time and wake-ups of
# the idle workers and launcher over $idle_secs seconds, from
# /proc/<pid>/stat and /proc/<pid>/status.

upkeep_flow() {
    local tps drained_at
    record_sizes "flow: before"
    tps=$(pgbench_tps postgres queue -M prepared -c 2 -j 2 -t $((flow_total / 200)) \
        -f "$bench/pgbench/flow.sql")
    wait_sor_empty || die "sor's queue did not drain"
    drained_at=$(sql queue -c "SELECT now()")
    record flow "enqueue, 2 clients" sor 1 "$(bc <<<"$tps * 100 / 1")" "cmds/s"
    record_sizes "flow: drained"
    log "  flow of $flow_total commands: enqueued at $(bc <<<"$tps * 100 / 1")/s, drained"
    [ "$av_wait" -gt 0 ] || return 0
    if poll_until "$av_wait" queue "SELECT last_autovacuum > '$drained_at' FROM pg_stat_all_tables WHERE relid = 'sor.command'::regclass;"; then
        record_sizes "flow: after autovacuum"
        log "  autovacuum has run"
    else
        log "  no autovacuum of sor.command within ${av_wait}s"
    fi
}

upkeep_idle() {
    sleep 2
    watch_start "$work/watch_idle"
    sleep "$idle_secs"
    watch_record "$work/watch_idle" idle
    log "  idle: sor's processes watched for ${idle_secs}s"
}

run_upkeep() {
    log "bloat: steady flow of $flow_total commands"
    upkeep_flow
    log "idle cost"
    upkeep_idle
}
