# bench/enforce.sh: part 1, the cost of enforcement (sourced by bench/suite).
#
# Database "enforce", synchronous_commit = off (CPU-bound comparison).  For
# every ownership scenario, five variants of one table (see
# sql/enforce.sql) are measured side by side, in rounds whose order of
# variants rotates:
#   single-row UPDATE by random key and single-row INSERT (pgbench, 2
#   clients, prepared statements, as the non-owner role bench);
#   bulk INSERT ... SELECT and COPY FROM a file, into a fresh table.
# Before the single-row rounds every variant's table is written once whole
# (enforce_warm_up).
#
# Scenarios: "default" (the domain's default site owns every key),
# "entries_<n>" (one explicit ownership entry per key, made by sor.claim()),
# and in full mode entries_10m (10M entries, loaded the way pg_restore
# loads sor's catalog: too many for claims within the time budget).

variants=(plain sor plpgsql rls noop)

enforce_setup() {
    sql postgres -c "CREATE DATABASE enforce" \
        -c "ALTER DATABASE enforce SET synchronous_commit = off"
    sql enforce -f "$bench/sql/enforce.sql" >/dev/null
}

# enforce_entries SCEN N KIND: the scenario's ownership: the default site
# (default), N claims (claims) or N entries loaded as by a restore.
enforce_entries() {
    local scen=$1 n=$2 kind=$3 ms
    case $kind in
    default)
        # one key (n + 1) owned by b, for the check that writes are refused
        sql enforce -c "SELECT sor.transfer('$scen', '$((n + 1))', 'b')" >/dev/null
        return ;;
    claims)
        ms=$(elapsed_ms postgres enforce \
            "SELECT count(sor.claim('$scen', i::text)) FROM generate_series(1, $n) i") ;;
    restore)
        ms=$(elapsed_ms postgres enforce \
            "INSERT INTO sor.owner_entry (domain, key, site, epoch)
             SELECT '$scen', i::text, 'a', 1 FROM generate_series(1, $n) i") ;;
    esac
    record setup "$scen" "$kind" 1 "$(bc <<<"scale=0; $n * 1000 / $ms")" "entries/s"
    log "  $n ownership entries ($kind) in $(bc <<<"scale=1; $ms / 1000") s"
}

# Every variant but plain and noop refuses a write of key n + 1, which site
# a does not own (no owner at all, or site b; RLS: the row says owner b).
enforce_check() {
    local scen=$1 n=$2 v status
    for v in "${variants[@]}"; do
        status=0
        sql_as bench enforce -c "BEGIN" \
            -c "INSERT INTO ${scen}_$v.ins (id, owner) VALUES ($((n + 1)), 'b')" \
            -c "ROLLBACK" >/dev/null 2>&1 || status=$?
        case $v in
        plain | noop)
            [ $status -eq 0 ] || die "$scen/$v refused a write" ;;
        *)
            [ $status -ne 0 ] || die "$scen/$v let a foreign write through" ;;
        esac
    done
    record check "$scen" enforcement 1 1 ok
}

enforce_scenario() {
    local scen=$1 n=$2 kind=$3 default_site=NULL s
    [ "$kind" = default ] && default_site="'a'"
    log "enforcement, scenario $scen: $n keys"
    sql enforce -c "CALL bench_scenario('$scen', $n, '$scen', $default_site)"
    enforce_entries "$scen" "$n" "$kind"
    enforce_warm_up "$scen" "$n"
    for s in "${variants[@]}"; do
        sql enforce -c "VACUUM ANALYZE ${scen}_$s.upd"
    done
    sql enforce -c "VACUUM ANALYZE sor.owner_entry"
    enforce_check "$scen" "$n"
    enforce_rows "$scen" "$n" update
    enforce_rows "$scen" "$n" insert
    enforce_bulk "$scen" "$n" insert_select
    enforce_bulk "$scen" "$n" copy
}

# Warm-up: every variant's table written once whole, as a server does that
# has run for a while, which fills sor's shared ownership cache (and the
# buffer cache, for every variant alike).  Not with 10M keys: their entries
# do not fit the shared cache, and writing every table whole would take
# longer than the scenario.
enforce_warm_up() {
    local scen=$1 n=$2 v ms
    [ "$n" -le 1000000 ] || return 0
    for v in "${variants[@]}"; do
        ms=$(elapsed_ms bench enforce "UPDATE ${scen}_$v.upd SET v = v")
        log "  warm-up of $v: $(bc <<<"scale=1; $ms / 1000") s"
    done
}

# enforce_rows SCEN N WORKLOAD [LABEL]: pgbench, every variant, $rounds
# rounds; recorded under LABEL (default SCEN).
enforce_rows() {
    local scen=$1 n=$2 workload=$3 label=${4:-$1} r v tps line
    for ((r = 1; r <= rounds; r++)); do
        line="  $workload round $r:"
        for v in $(rotate ${#variants[@]} "$r" "${variants[@]}"); do
            tps=$(PGOPTIONS="-c search_path=${scen}_$v" pgbench_tps bench enforce \
                -M prepared -c 2 -j 2 -T "$secs" -D n="$n" -f "$bench/pgbench/$workload.sql")
            record enforce_row "$label/$workload" "$v" "$r" "$tps" tps
            line+=" $v $tps"
        done
        log "$line"
    done
}

# enforce_bulk SCEN N WORKLOAD [LABEL]: $bulk_rows rows into a fresh table
# per variant and round, recorded as scenario LABEL (default SCEN).  COPY
# FROM is not supported under row-level security: no rls figure for it.
enforce_bulk() {
    local scen=$1 n=$2 workload=$3 label=${4:-$1} r v ms stmt line
    local file=$work/copy_$scen.csv
    local rows="SELECT 1 + (i::bigint * 7919) % $n, 'a', i FROM generate_series(1, $bulk_rows) i"
    [ "$workload" = copy ] && [ ! -f "$file" ] &&
        sql enforce -c "COPY ($rows) TO '$file' (FORMAT csv)"
    for ((r = 1; r <= bulk_rounds; r++)); do
        line="  $workload round $r:"
        for v in $(rotate ${#variants[@]} "$r" "${variants[@]}"); do
            [ "$workload" = copy ] && [ "$v" = rls ] && continue
            sql enforce -c "SELECT bench_table('${scen}_$v', 'bulk', '$v', '$scen', NULL, false)" >/dev/null
            case $workload in
            insert_select) stmt="INSERT INTO ${scen}_$v.bulk (id, owner, v) $rows" ;;
            copy) stmt="COPY ${scen}_$v.bulk (id, owner, v) FROM '$file' (FORMAT csv)" ;;
            esac
            ms=$(elapsed_ms bench enforce "$stmt")
            sql enforce -c "DROP TABLE ${scen}_$v.bulk"
            record enforce_bulk "$label/$workload" "$v" "$r" "$(bc <<<"scale=0; $bulk_rows * 1000 / $ms")" "rows/s"
            line+=" $v ${ms}ms"
        done
        log "$line"
    done
}

# enforce_prewarmed SCEN N: the scenario's single-row and bulk writes once
# more, with sor's shared ownership cache sized for its N entries (the
# server restarted with sor.shared_cache_entries at least 1.5 N, if the
# cache is smaller) and filled by sor.prewarm_shared_cache(), as an administrator
# would for a domain this large.  Recorded as scenario SCEN_prewarmed, for
# the unregistered table, sor and the no-op trigger only: PL/pgSQL's
# sor.owner_of() and RLS do not read the shared cache.
enforce_prewarmed() {
    local scen=$1 n=$2 slots ms resized=false
    local variants=(plain sor noop)
    slots=$(sql postgres -c "SHOW sor.shared_cache_entries")
    if [ "$slots" -lt $((n + n / 2)) ]; then
        while [ "$slots" -lt $((n + n / 2)) ]; do slots=$((slots * 2)); done
        sql postgres -c "ALTER SYSTEM SET sor.shared_cache_entries = $slots"
        restart_server
        resized=true
    fi
    log "enforcement, scenario ${scen}_prewarmed: $n keys, a shared cache of $slots entries"
    ms=$(elapsed_ms postgres enforce "SELECT sor.prewarm_shared_cache('$scen')")
    record setup "$scen" prewarm 1 "$(bc <<<"scale=0; $n * 1000 / $ms")" "entries/s"
    log "  prewarm of $n entries in $(bc <<<"scale=1; $ms / 1000") s"
    enforce_rows "$scen" "$n" update "${scen}_prewarmed"
    enforce_rows "$scen" "$n" insert "${scen}_prewarmed"
    enforce_bulk "$scen" "$n" insert_select "${scen}_prewarmed"
    enforce_bulk "$scen" "$n" copy "${scen}_prewarmed"
    if $resized; then
        sql postgres -c "ALTER SYSTEM RESET sor.shared_cache_entries"
        restart_server
    fi
}

# The workers of this database have no commands to run: what they cost
# meanwhile is recorded too (part busy_db).
run_enforcement() {
    local spec start=$SECONDS
    enforce_setup
    poll_until 30 postgres "SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'sor worker' AND datname = 'enforce';" ||
        die "the workers of database enforce did not start"
    watch_start "$work/watch_enforce" enforce
    for spec in "${scenarios[@]}"; do
        # shellcheck disable=SC2086
        enforce_scenario $spec
    done
    watch_record "$work/watch_enforce" busy_db
    record busy_db "part 1" duration 1 $((SECONDS - start)) s
    # the largest scenario again, prewarmed (after busy_db: it restarts
    # the server, and with it the workers)
    # shellcheck disable=SC2086
    enforce_prewarmed $(printf '%s\n' "${scenarios[@]}" | awk '$3 != "default" { s = $1 " " $2 } END { print s }')
    # The next parts start on a quiet server: no autovacuum of this
    # database's tens of millions of rows under them (DROP DATABASE also
    # checkpoints).
    sql postgres -c "DROP DATABASE enforce WITH (FORCE)"
    ndb=1
}
