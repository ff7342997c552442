# bench/lib.sh: helpers shared by the benchmark parts (sourced by
# bench/suite, which runs as the postgres user): the throwaway server,
# psql and pgbench wrappers, polling, and recording of results.
#
# Expects: $work (the run's temporary directory), $port, $bench (this
# directory), $bin (the PostgreSQL binaries).

sock=$work
out=$work/out
raw=$out/raw.csv

# Progress goes to stderr: stdout carries the values that functions return.
log() { printf '%s  %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Start the server: settings that hold for every part; the enforcement
# database turns synchronous_commit off for itself (see setup_databases).
# sor's shared ownership cache is sized to hold the 100,000 entries of
# part 1 (16 MB; the default holds 65,536).  bench/run reserves huge pages
# for the shared memory.
start_server() {
    "$bin/initdb" -D "$work/data" -A trust -E UTF8 --locale=C >/dev/null
    cat >>"$work/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$sock'
port = $port
shared_preload_libraries = 'sor'
shared_buffers = 1GB
huge_pages = try
max_wal_size = 8GB
checkpoint_timeout = 30min
max_locks_per_transaction = 256
sor.shared_cache_entries = 262144
EOF
    "$bin/pg_ctl" -D "$work/data" -l "$work/server.log" -w start >/dev/null
}

# restart_server: after a change of a setting that needs a restart.
restart_server() {
    "$bin/pg_ctl" -D "$work/data" -l "$work/server.log" -m fast -w restart >/dev/null
}

stop_server() {
    [ -f "$work/data/postmaster.pid" ] || return 0
    "$bin/pg_ctl" -D "$work/data" -m fast -w stop >/dev/null 2>&1 || true
}

# sql DB [psql args]: run SQL as the postgres superuser, unaligned output.
sql() {
    local db=$1
    shift
    "$bin/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$sock" -p "$port" -d "$db" "$@"
}

# sql_as ROLE DB [psql args]
sql_as() {
    local role=$1
    shift
    sql "$@" -U "$role"
}

# elapsed_ms ROLE DB SQL: the server-side duration of one statement, as
# psql's \timing reports it.
elapsed_ms() {
    sql_as "$1" "$2" -c '\timing on' -c "$3" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
}

# pgbench_tps ROLE DB PGBENCH-ARGS...: run pgbench, print its TPS (without
# connection time); fail if any transaction failed (pgbench counts
# deadlocks and serialization failures without failing itself).
pgbench_tps() {
    local role=$1 db=$2 output
    shift 2
    if ! output=$("$bin/pgbench" -h "$sock" -p "$port" -U "$role" -n "$@" "$db" 2>&1) ||
        ! grep -q '^number of failed transactions: 0 ' <<<"$output"; then
        printf '%s\n' "$output" >&2
        die "pgbench failed"
    fi
    sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' <<<"$output"
}

# poll_until SECONDS DB SQL: poll (every 20 ms, one short transaction each,
# on one connection) until SQL returns t; return 1 on timeout.
poll_until() {
    local limit=$1 db=$2 query=$3 answer deadline status=1 to from
    deadline=$((${EPOCHREALTIME/./} + limit * 1000000))
    coproc POLL { "$bin/psql" -X -q -A -t -h "$sock" -p "$port" -d "$db" 2>&1; }
    to=${POLL[1]} from=${POLL[0]}
    while [ "${EPOCHREALTIME/./}" -le "$deadline" ]; do
        printf '%s\n' "$query" >&"$to"
        read -r answer <&"$from" || die "polling failed"
        if [ "$answer" = t ]; then
            status=0
            break
        fi
        sleep 0.02
    done
    exec {to}>&-
    wait "$POLL_PID" || true
    return $status
}

# set_workers N: set sor.workers and wait until that many workers run in
# each of the $ndb databases with sor.
set_workers() {
    local n=$1
    sql postgres -c "ALTER SYSTEM SET sor.workers = $n" -c "SELECT pg_reload_conf()" >/dev/null
    poll_until 30 postgres "SELECT count(*) = $((n * ndb)) FROM pg_stat_activity WHERE backend_type = 'sor worker';" ||
        die "sor.workers = $n did not take effect"
}

# record PART CASE VARIANT ROUND VALUE UNIT: one measurement, a CSV line.
record() {
    local field line=""
    for field in "$@"; do
        line+="\"${field//\"/\"\"}\","
    done
    printf '%s\n' "${line%,}" >>"$raw"
}

# rotate N I WORDS...: WORDS rotated left by I mod N (alternates the order
# of the variants from one round to the next).
rotate() {
    local n=$1 i=$2
    shift 2
    local words=("$@") k
    for ((k = 0; k < n; k++)); do
        printf '%s ' "${words[$(((k + i) % n))]}"
    done
}

# cpu_and_wakeups PID: "ticks switches" of a process so far: user and
# system CPU time (clock ticks), voluntary and involuntary context switches.
cpu_and_wakeups() {
    local stat fields
    stat=$(<"/proc/$1/stat")
    read -ra fields <<<"${stat##*) }"
    printf '%s %s\n' $((fields[11] + fields[12])) \
        "$(awk '/ctxt_switches/ { n += $2 } END { print n }' "/proc/$1/status")"
}

# watch_start FILE [DB]: note the counters of sor's launcher and workers
# (only DB's workers, if given) in FILE.
watch_start() {
    local file=$1 filter="backend_type IN ('sor worker', 'sor launcher')" pid type
    [ -z "${2:-}" ] || filter="backend_type = 'sor worker' AND datname = '$2'"
    sql postgres -c "SELECT pid, backend_type FROM pg_stat_activity WHERE $filter" |
        while IFS='|' read -r pid type; do
            printf '%s|%s|%s\n' "$pid" "$type" "$(cpu_and_wakeups "$pid")"
        done >"$file"
}

# watch_record FILE PART: record, per process noted in FILE, the CPU time
# and context switches since.
watch_record() {
    local pid type counters ticks switches now_ticks now_switches hz
    hz=$(getconf CLK_TCK)
    while IFS='|' read -r pid type counters; do
        [ -d "/proc/$pid" ] || continue
        read -r ticks switches <<<"$counters"
        read -r now_ticks now_switches < <(cpu_and_wakeups "$pid")
        record "$2" "$type $pid" "cpu ms" 1 $(((now_ticks - ticks) * 1000 / hz)) ms
        record "$2" "$type $pid" "context switches" 1 $((now_switches - switches)) count
    done <"$1"
}
