# bench/report.sh: the results (sourced by bench/suite).  Loads raw.csv
# into the server, writes results.md (machine, settings, tables, goals),
# summary.csv (median, min and max of every figure) and the PNG plots.

# The machine and the server, as markdown.
describe_setup() {
    local cpu mem
    cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
    mem=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
    cat <<EOF
# sor benchmark results ($mode mode)

- date: $(date -u '+%Y-%m-%d %H:%M UTC'); sor commit: ${SOR_COMMIT:-unknown}
- machine: $(nproc) CPUs ($cpu), $mem RAM, Linux $(uname -r)
- server: $(sql postgres -c "SELECT version()")
- settings (all databases): $(sql postgres -c "SELECT string_agg(name || ' = ' || current_setting(name), ', ' ORDER BY name)
    FROM pg_settings WHERE source IN ('configuration file', 'command line')
     AND name NOT IN ('unix_socket_directories', 'data_directory', 'hba_file', 'ident_file', 'config_file',
                      'lc_messages', 'lc_monetary', 'lc_numeric', 'lc_time', 'log_timezone', 'TimeZone',
                      'default_text_search_config', 'dynamic_shared_memory_type')")
- huge pages: $(awk '/^HugePages_Total:/ { t = $2 } /^HugePages_Free:/ { f = $2 } /^HugePages_Rsvd:/ { r = $2 } /^Hugepagesize:/ { kb = $2 } END { printf "%d pages of %d kB reserved for the run, %d in use by the server at the end", t, kb, t - f + r }' /proc/meminfo)
- database enforce (part 1): synchronous_commit = off; database queue (parts 2-4): synchronous_commit = on (durable, the default)
- rounds: pgbench $rounds × ${secs} s per variant, bulk $bulk_rounds rounds of $bulk_rows rows, queue $queue_rounds rounds; runtime of the benchmark: $(( (SECONDS + 30) / 60 )) min
EOF
}

# export_plot_data: tab-separated inputs of plot.gp.
export_plot_data() {
    local part
    for part in enforce_row enforce_bulk; do
        sql postgres -F $'\t' -c "SELECT replace(case_, '_', ' '),
                max(median) FILTER (WHERE variant = 'plain'), max(median) FILTER (WHERE variant = 'sor'),
                coalesce(max(median) FILTER (WHERE variant = 'plpgsql'), 0),
                coalesce(max(median) FILTER (WHERE variant = 'rls'), 0),
                max(median) FILTER (WHERE variant = 'noop')
              FROM med WHERE part = '$part' GROUP BY case_
              ORDER BY split_part(case_, '/', 1), split_part(case_, '/', 2) DESC" >"$out/$part.dat"
    done
    sql postgres -F $'\t' -c "SELECT regexp_replace(case_, ' groups?$', ''),
            max(median) FILTER (WHERE variant = 'sor'), max(median) FILTER (WHERE variant = 'sql'),
            coalesce(max(median) FILTER (WHERE variant = 'sql_1consumer'), 0)
          FROM med WHERE part = 'drain' AND case_ NOT LIKE '%transaction%' GROUP BY case_
          ORDER BY split_part(case_, ' ', 1)::int" >"$out/drain.dat"
}

write_report() {
    local header
    header=$(describe_setup)
    sql postgres -c "CREATE TABLE bench_raw (seq serial, part text, case_ text, variant text,
                                             round int, value numeric, unit text)" \
        -c "\\copy bench_raw (part, case_, variant, round, value, unit) FROM '$raw' (FORMAT csv)"
    {
        printf '%s\n\n' "$header"
        sql postgres -v mode="$mode" -f "$bench/sql/report.sql"
        printf '\nPlots: enforce_row.png, enforce_bulk.png, drain.png, latency.png.\n'
    } >"$out/results.md"
    sql postgres -c "\\copy (SELECT part, case_, variant, unit, n, median, min, max FROM med ORDER BY part, case_, variant) TO '$out/summary.csv' (FORMAT csv, HEADER)"
    export_plot_data
    gnuplot -e "dir='$out'" "$bench/plot.gp"
}
