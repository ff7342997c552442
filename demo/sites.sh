# demo/sites.sh: start and join local PostgreSQL servers that play sor
# sites, for the demo (demo/run) and for trying things by hand.  Sourced by
# bash; needs root (servers run as the postgres user).
#
#   sites_start DIR PORT NAME...   one server per NAME, ports PORT, PORT+1,
#                                  ..., database "shop", pglogical and sor
#                                  installed, every site added, each its
#                                  own local site
#   sites_join                     make every site a pglogical node that
#                                  subscribes to every other, and wait until
#                                  every subscription replicates
#   site_sql NAME [psql args]      psql at site NAME
#   site_dsn NAME                  connection string of site NAME
#   sites_stop                     stop the servers and remove DIR
#
# Set sites_shown=NAME to see the SQL that sites_start and sites_join run at
# site NAME (the other sites run the same with their own names).
#
# Each server listens only on a Unix socket in DIR, and has wal_level =
# logical, shared_preload_libraries = 'pglogical, sor', max_worker_processes
# = 16 (the default 8 does not hold pglogical's workers and sor's), and on
# PostgreSQL 15.19 and later output_plugin_libraries (pglogical's output
# plugin must be allowed).

pgver=${PGVER:-15}
pgbin=/usr/lib/postgresql/$pgver/bin
declare -A site_port=()
sites_dir=
site_names=()
sites_shown=${sites_shown:-}

# (from /, since the current directory may be closed to postgres)
as_postgres() { (cd / && runuser -u postgres -- "$@"); }

site_sql() {
    local name=$1
    shift
    as_postgres "$pgbin/psql" -X -q -h "$sites_dir" -p "${site_port[$name]}" \
        -d shop -v ON_ERROR_STOP=1 "$@"
}

site_dsn() {
    echo "host=$sites_dir port=${site_port[$1]} dbname=shop user=postgres"
}

# Run SQL statements (arguments) at site NAME; show them if it is the
# site to show.
site_run() {
    local name=$1 sql
    shift
    if [ "$name" = "$sites_shown" ]; then
        for sql in "$@"; do echo "  $sql;"; done
    fi
    for sql in "$@"; do site_sql "$name" -c "$sql" >/dev/null; done
}

# sites_ports_free PORT COUNT: fail, saying so, if something listens on one
# of the ports PORT ... PORT+COUNT-1: a TCP port on this machine, or a
# PostgreSQL socket in the usual places.
sites_ports_free() {
    local port
    for port in $(seq "$1" $(($1 + $2 - 1))); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null ||
            [ -S "/var/run/postgresql/.s.PGSQL.$port" ] || [ -S "/tmp/.s.PGSQL.$port" ]; then
            echo "port $port is in use; choose other ports" >&2
            return 1
        fi
    done
}

sites_start() {
    sites_dir=$1
    local port=$2 name
    shift 2
    site_names=("$@")
    sites_ports_free "$port" $# || return 1
    for name in "${site_names[@]}"; do
        site_port[$name]=$port
        port=$((port + 1))
    done
    mkdir -p "$sites_dir"
    chown postgres "$sites_dir"

    local extra=
    if "$pgbin/postgres" --describe-config | grep '^output_plugin_libraries' >/dev/null; then
        extra="output_plugin_libraries = 'pgoutput, test_decoding, pglogical_output'"
    fi
    local pids=() pid
    for name in "${site_names[@]}"; do
        as_postgres "$pgbin/initdb" -D "$sites_dir/$name" -A trust >/dev/null &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || return 1; done
    for name in "${site_names[@]}"; do
        cat >>"$sites_dir/$name/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$sites_dir'
port = ${site_port[$name]}
wal_level = logical
shared_preload_libraries = 'pglogical, sor'
track_commit_timestamp = on
max_worker_processes = 16
$extra
CONF
        if ! as_postgres "$pgbin/pg_ctl" -D "$sites_dir/$name" -l "$sites_dir/$name.log" -w start >/dev/null; then
            echo "the server of site $name did not start; its log:" >&2
            tail -n 20 "$sites_dir/$name.log" >&2
            return 1
        fi
        as_postgres "$pgbin/createdb" -h "$sites_dir" -p "${site_port[$name]}" shop
    done

    local other adds=
    for other in "${site_names[@]}"; do
        adds+="${adds:+, }sor.add_site('$other')"
    done
    for name in "${site_names[@]}"; do
        site_run "$name" "CREATE EXTENSION pglogical" "CREATE EXTENSION sor" \
            "SELECT $adds" "SELECT sor.set_local_site('$name')"
    done
}

sites_join() {
    local name other
    for name in "${site_names[@]}"; do
        site_run "$name" "SELECT sor.create_node('$(site_dsn "$name")')"
    done
    for name in "${site_names[@]}"; do
        for other in "${site_names[@]}"; do
            [ "$name" = "$other" ] ||
                site_run "$name" "SELECT sor.subscribe('$other', '$(site_dsn "$other")')"
        done
    done
    # wait (up to 30 s) until every subscription replicates
    local waiting
    for _ in $(seq 300); do
        waiting=
        for name in "${site_names[@]}"; do
            waiting+=$(site_sql "$name" -tA -c "SELECT string_agg(' ' || subscription_name || ' (' || status || ')', '') FROM pglogical.show_subscription_status() WHERE status <> 'replicating'")
        done
        [ -z "$waiting" ] && return 0
        sleep 0.1
    done
    echo "subscriptions not replicating after 30 s:$waiting (see the logs in $sites_dir)" >&2
    return 1
}

sites_stop() {
    local name
    for name in "${site_names[@]}"; do
        as_postgres "$pgbin/pg_ctl" -D "$sites_dir/$name" -m fast stop >/dev/null 2>&1 || true
    done
    if [ -n "$sites_dir" ]; then rm -rf "$sites_dir"; fi
}
