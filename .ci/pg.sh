#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for edgebind's store tests.
#
#   eval "$(.ci/pg.sh)"            # or `.ci/pg.sh start`: initdb + start, print exports
#   .ci/pg.sh stop [DIR]           # stop and delete DIR (default: $EDGEBIND_PG_DIR)
#
# `start` prints, for eval, EDGEBIND_TEST_PG_URL (a superuser URL on 127.0.0.1,
# trust auth, free port) and EDGEBIND_PG_DIR (the temp dir holding the cluster,
# its socket and its log). Everything else goes to stderr. initdb refuses to run
# as root, so as root the server runs as the `postgres` user (created if missing).
# The cluster runs with fsync off: it is for tests only.
set -euo pipefail

PYTHON=${PYTHON:-python3}

die() { echo "pg.sh: $*" >&2; exit 1; }

# Run a command as the cluster's owner, from a directory that owner can read.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        (cd "$dir" && runuser -u postgres -- "$@")
    else
        (cd "$dir" && "$@")
    fi
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    command -v initdb >/dev/null || die "initdb not found on PATH"
    command -v pg_ctl >/dev/null || die "pg_ctl not found on PATH"
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd -m postgres >&2 || die "could not create the postgres user"
    fi
    dir=$(mktemp -d "${TMPDIR:-/tmp}/edgebind-pg.XXXXXX")
    trap 'as_owner pg_ctl -D "$dir/data" stop -m immediate >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$dir"
        chmod 700 "$dir"
    fi
    if ! as_owner initdb -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1; then
        cat "$dir/initdb.log" >&2
        die "initdb failed"
    fi
    local port started=""
    for _ in 1 2 3; do
        port=$(free_port)
        if as_owner pg_ctl -D "$dir/data" -l "$dir/server.log" -w -t 30 \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
            start >&2; then
            started=1
            break
        fi
    done
    if [ -z "$started" ]; then
        cat "$dir/server.log" >&2 || true
        die "the server did not start"
    fi
    trap - EXIT
    echo "export EDGEBIND_TEST_PG_URL=postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
    echo "export EDGEBIND_PG_DIR=$dir"
}

stop() {
    dir=${1:-${EDGEBIND_PG_DIR:-}}
    [ -n "$dir" ] || die "stop: give DIR or set EDGEBIND_PG_DIR"
    case "$(basename "$dir")" in
        edgebind-pg.*) ;;
        *) die "stop: $dir is not a cluster made by pg.sh" ;;
    esac
    [ -d "$dir" ] || return 0
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_owner pg_ctl -D "$dir/data" stop -m fast -w >&2 || echo "pg.sh: pg_ctl stop failed; removing anyway" >&2
    fi
    rm -rf "$dir"
}

case "${1:-start}" in
    start) start ;;
    stop) stop "${2:-}" ;;
    *) die "usage: $0 [start|stop [DIR]]" ;;
esac
