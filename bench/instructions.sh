#!/usr/bin/env bash
# bench/instructions.sh: run by bench/instructions as the postgres user:
#   instructions.sh WORK PORT STATEMENTS
# Builds the tables of part 1 (bench/sql/enforce.sql) for two ownership
# scenarios, stops the server, and counts with callgrind the instructions
# of STATEMENTS single-row UPDATEs or INSERTs by random key, per variant,
# in single-user mode; prints a markdown table.
set -euo pipefail

work=$1
port=$2
statements=$3
bench=$(cd "$(dirname "$0")" && pwd)
bin=/usr/lib/postgresql/${PGVER:-15}/bin
few=200
keys=100000
variants=(plain sor plpgsql rls noop)

# shellcheck source=/dev/null
. "$bench/lib.sh"
mkdir -p "$out"

log "building the tables in $work (port $port)"
start_server
trap stop_server EXIT
sql postgres -c "CREATE DATABASE enforce"
sql enforce -f "$bench/sql/enforce.sql" >/dev/null
# default: every key falls to site a, except one handed to b (as in part 1)
sql enforce -c "CALL bench_scenario('default', $keys, 'default', 'a')" \
    -c "SELECT sor.transfer('default', '$((keys + 1))', 'b')" >/dev/null
# entries: one ownership entry per key, loaded as a restore loads them
sql enforce -c "CALL bench_scenario('entries', $keys, 'entries', NULL)" \
    -c "INSERT INTO sor.owner_entry (domain, key, site, epoch)
        SELECT 'entries', i::text, 'a', 1 FROM generate_series(1, $keys) i" \
    -c "VACUUM ANALYZE" >/dev/null
stop_server

# script SCHEMA WORKLOAD N [WARM]: N statements of one session, as the role
# bench; WARM: after a write of every row of upd, which fills sor's shared
# ownership cache (as in part 1 of bench/run), a VACUUM, and an ANALYZE of
# a sor catalog table, whose invalidation empties the session's own caches
# as if it were a new session
script() {
    local schema=$1 workload=$2 n=$3 warm=${4:-}
    printf "SET search_path = %s\n" "$schema"
    if [ -n "$warm" ]; then
        printf "UPDATE upd SET v = v\nVACUUM upd\nANALYZE sor.domain\n"
    fi
    printf "SET ROLE bench\nSET bench.site = 'a'\n"
    case $workload in
    UPDATE) echo 'PREPARE w(bigint) AS UPDATE upd SET v = v + 1 WHERE id = $1' ;;
    INSERT) echo "PREPARE w(bigint) AS INSERT INTO ins (id, owner, v) VALUES (\$1, 'a', 1)" ;;
    esac
    awk -v n="$n" -v keys="$keys" \
        'BEGIN { srand(1); for (i = 0; i < n; i++) printf "EXECUTE w(%d)\n", 1 + int(rand() * keys) }'
}

# instructions SCHEMA WORKLOAD N [WARM]: instructions of the whole
# single-user run.  A warm run starts from a fresh copy of the data
# directory, so that its warm-up costs the same with few and with many
# statements.
instructions() {
    local file=$work/callgrind.out data=$work/data
    script "$@" >"$work/script.sql"
    if [ -n "${4:-}" ]; then
        data=$work/warm
        rm -rf "$data"
        cp -a "$work/data" "$data"
    fi
    valgrind --tool=callgrind --callgrind-out-file="$file" \
        "$bin/postgres" --single -D "$data" -c synchronous_commit=off \
        -c sor.shared_cache_entries=262144 enforce \
        <"$work/script.sql" >"$work/single.log" 2>"$work/valgrind.log"
    grep -q ERROR "$work/single.log" && die "$1, $2: $(grep -m1 ERROR "$work/single.log")"
    sed -n 's/^totals: //p' "$file"
}

declare -A cost
log "counting instructions: $few and $statements statements per variant"
for scen in default entries; do
    for workload in UPDATE INSERT; do
        for v in "${variants[@]}"; do
            a=$(instructions "${scen}_$v" $workload $few)
            b=$(instructions "${scen}_$v" $workload "$statements")
            cost[$scen/$workload/$v]=$(((b - a) / (statements - few)))
            log "  $scen $workload $v: ${cost[$scen/$workload/$v]} instructions per statement"
        done
    done
done

# entries, warm: only the unregistered table and sor (PL/pgSQL would write
# 100,000 rows under callgrind for its warm-up)
for workload in UPDATE INSERT; do
    for v in plain sor; do
        a=$(instructions "entries_$v" $workload $few warm)
        b=$(instructions "entries_$v" $workload "$statements" warm)
        cost[warm/$workload/$v]=$(((b - a) / (statements - few)))
        log "  entries (warm) $workload $v: ${cost[warm/$workload/$v]} instructions per statement"
    done
done

extra() { echo $((cost[$1/$2/$3] - cost[$1/$2/plain])); }
ratio() { if [ "$2" -gt 0 ]; then bc <<<"scale=2; $1 / $2"; else echo "n/a"; fi; }

echo
echo "Instructions per statement (callgrind, single-user mode, $((statements - few)) statements);"
echo "a variant's column is what it adds to the unregistered table."
echo
echo "| scenario | workload | unregistered | sor | PL/pgSQL | RLS | no-op trigger | PL/pgSQL ÷ sor | sor ÷ no-op |"
echo "|---|---|--:|--:|--:|--:|--:|--:|--:|"
for scen in default entries; do
    for workload in UPDATE INSERT; do
        s=$(extra $scen $workload sor)
        p=$(extra $scen $workload plpgsql)
        r=$(extra $scen $workload rls)
        n=$(extra $scen $workload noop)
        printf '| %s | %s | %d | %+d | %+d | %+d | %+d | %s | %s |\n' "$scen" "$workload" \
            "${cost[$scen/$workload/plain]}" "$s" "$p" "$r" "$n" "$(ratio "$p" "$s")" "$(ratio "$s" "$n")"
    done
done
for workload in UPDATE INSERT; do
    printf '| entries, warm | %s | %d | %+d | | | | | |\n' "$workload" \
        "${cost[warm/$workload/plain]}" "$(extra warm $workload sor)"
done
