# demo/sites.sh: start and join local PostgreSQL servers that play sor
# sites, for the demo (demo/run) and for trying things by hand.  Sourced by
# bash; needs root (servers run as the postgres user).
#
#   sites_start DIR PORT NAME...   one server per NAME, ports PORT, PORT+1,
#                                  ..., database "shop", sor and pglogical
#                                  installed, every site added
#   sites_join                     make every site subscribe to every other
#   site_sql NAME [psql args]      psql at site NAME
#   sites_stop                     stop the servers and remove DIR
#
# Each server has wal_level = logical and shared_preload_libraries =
# 'pglogical, sor'; on PostgreSQL 15.19 and later also
# output_plugin_libraries (pglogical's output plugin must be allowed).

pgver=${PGVER:-15}
pgbin=/usr/lib/postgresql/$pgver/bin
declare -A site_port=()
sites_dir=
site_names=()

as_postgres() { runuser -u postgres -- "$@"; }

site_sql() {
    local name=$1
    shift
    as_postgres "$pgbin/psql" -X -q -h "$sites_dir" -p "${site_port[$name]}" \
        -d shop -v ON_ERROR_STOP=1 "$@"
}

site_dsn() {
    echo "host=$sites_dir port=${site_port[$1]} dbname=shop user=postgres"
}

sites_start() {
    sites_dir=$1
    local port=$2
    shift 2
    site_names=("$@")
    mkdir -p "$sites_dir"
    chown postgres "$sites_dir"
    local extra=
    if "$pgbin/postgres" --describe-config 2>/dev/null | grep -q '^output_plugin_libraries'; then
        extra="output_plugin_libraries = 'pgoutput, test_decoding, pglogical_output'"
    fi
    local name
    for name in "${site_names[@]}"; do
        site_port[$name]=$port
        as_postgres "$pgbin/initdb" -D "$sites_dir/$name" -A trust >/dev/null
        cat >>"$sites_dir/$name/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$sites_dir'
port = $port
wal_level = logical
shared_preload_libraries = 'pglogical, sor'
track_commit_timestamp = on
$extra
CONF
        as_postgres "$pgbin/pg_ctl" -D "$sites_dir/$name" -l "$sites_dir/$name.log" -w start >/dev/null
        as_postgres "$pgbin/createdb" -h "$sites_dir" -p "$port" shop
        site_sql "$name" -c "CREATE EXTENSION pglogical" -c "CREATE EXTENSION sor"
        port=$((port + 1))
    done
    local other
    for name in "${site_names[@]}"; do
        for other in "${site_names[@]}"; do
            site_sql "$name" -c "SELECT sor.add_site('$other')" >/dev/null
        done
        site_sql "$name" -c "SELECT sor.set_local_site('$name')" >/dev/null
    done
}

sites_join() {
    local name other
    for name in "${site_names[@]}"; do
        site_sql "$name" -c "SELECT sor.create_node('$(site_dsn "$name")')" >/dev/null
    done
    for name in "${site_names[@]}"; do
        for other in "${site_names[@]}"; do
            [ "$name" = "$other" ] && continue
            site_sql "$name" -c "SELECT sor.subscribe('$other', '$(site_dsn "$other")')" >/dev/null
        done
    done
    # wait until every subscription replicates
    for name in "${site_names[@]}"; do
        for _ in $(seq 100); do
            [ "$(site_sql "$name" -tA -c "SELECT count(*) FROM pglogical.show_subscription_status() WHERE status <> 'replicating'")" = 0 ] && break
            sleep 0.1
        done
    done
}

sites_stop() {
    local name
    for name in "${site_names[@]}"; do
        as_postgres "$pgbin/pg_ctl" -D "$sites_dir/$name" -m fast stop >/dev/null 2>&1 || true
    done
    rm -rf "$sites_dir"
}
