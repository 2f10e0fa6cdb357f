#!/bin/sh
# Runbook: restore the whole Postgres cluster, as it was at TARGET_TIME, from pgBackRest's repository (the newest
# backup taken before TARGET_TIME, then the archived WAL up to it; pgbackrest.conf, postgres.conf's archive_command).
#
#   MODE=scratch   into a new data directory (SCRATCH_DIR), then start a scratch Postgres on it (a socket in
#                  SCRATCH_DIR's run/ only, port SCRATCH_PORT, archive_mode=off so that it never writes a timeline
#                  of its own into the live repository; the superuser alone may log in, over that socket) and wait
#                  until it has reached TARGET_TIME and been promoted. It keeps running: look at it, copy out of
#                  it (runbooks/recover-app.sh does), then stop it with the command printed at the end. The live
#                  cluster is not touched.
#   MODE=in-place  over the live data directory, which pgBackRest's own settings name (pg1-path), with --delta
#                  (only the files that differ are written). Postgres MUST be stopped first: this script refuses
#                  otherwise. Start Postgres afterwards: it replays WAL up to TARGET_TIME, promotes, and from then
#                  on continues on a new timeline (archived as usual). Everything written after TARGET_TIME is gone.
#
# Settings (environment):
#   TARGET_TIME        required: a time Postgres understands, with its zone, e.g. "2026-12-07 23:10:00.123+00"
#   MODE               scratch (default) or in-place
#   STANZA             pgBackRest's stanza (default pgprov: PGBACKREST_STANZA)
#   PGBACKREST_CONFIG  pgbackrest.conf (default /etc/pgbackrest/pgbackrest.conf, as compose mounts it)
#   PGPASSFILE         not needed here (nothing logs in to the live server); pgBackRest ignores it for a restore
#   PG_OS_USER         when run as root: the OS user pgBackRest and Postgres run as (default postgres); they
#                      refuse root, and the files they make must be that user's. Ignored when not root.
#   PG_BIN_DIR         PostgreSQL 15's programs (default /usr/lib/postgresql/15/bin)
#   MODE=scratch:
#     SCRATCH_DIR      the new data directory (must not exist, or be empty); its parent must be reachable by PG_OS_USER
#     SCRATCH_PORT     a spare port for the scratch Postgres (default 55432; only its socket's name carries it)
#     POSTGRES_CONF    the postgres.conf to start it with (default /etc/postgresql/postgresql.conf, as compose mounts it)
#   MODE=in-place:
#     DISK_RESERVE_MB  when set (as in compose, 256), init/00-disk-reserve.sh's reserve is made again in the data
#                      directory (backups leave it out: pgbackrest.conf, exclude)
#     RESERVE_SCRIPT   that script (default: ../init/00-disk-reserve.sh beside this file)
#
# Compose (not run here: no Docker on the machine that tests this; the local stack's variant is what the tests run):
#   scratch:  docker compose exec -u postgres -e TARGET_TIME='2026-12-07 23:10:00+00' -e SCRATCH_DIR=/var/lib/postgresql/scratch \
#               postgres sh /runbooks/restore-cluster.sh
#   in-place: docker compose stop service pgbouncer postgres
#             docker compose run --rm --no-deps -u postgres -e MODE=in-place -e TARGET_TIME='…' -e DISK_RESERVE_MB=256 \
#               --entrypoint sh postgres /runbooks/restore-cluster.sh
#             docker compose up -d
# The local stack (as root; the tests' values): PGBACKREST_CONFIG=$STACK_DIR/pgbackrest/pgbackrest.conf,
#   POSTGRES_CONF=$STACK_DIR/pgconf/postgres.conf, PG_OS_USER=postgres; in-place after the stack's Postgres stopped.
#
# Exit status 0 when done; anything else: nothing was started (scratch) or the data directory must not be
# started before this script has been run again to its end (in-place).
set -eu

: "${TARGET_TIME:?TARGET_TIME is required: the moment to restore to, e.g. 2026-12-07 23:10:00+00}"
MODE=${MODE:-scratch}
STANZA=${STANZA:-pgprov}
PGBACKREST_CONFIG=${PGBACKREST_CONFIG:-/etc/pgbackrest/pgbackrest.conf}
export PGBACKREST_CONFIG
PG_BIN_DIR=${PG_BIN_DIR:-/usr/lib/postgresql/15/bin}
here=$(cd "$(dirname "$0")" && pwd)

say() { printf 'restore-cluster: %s\n' "$*"; }
fail() { printf 'restore-cluster: error: %s\n' "$*" >&2; exit 1; }

case $STANZA in *[!A-Za-z0-9_-]*|'') fail "STANZA must be a plain name" ;; esac
case $TARGET_TIME in *"'"*|*'"'*) fail "TARGET_TIME must not contain quotes" ;; esac

# as_pg and own: a command, and files, as the Postgres OS user (PG_OS_USER when run as root).
. "$here/as-postgres.sh"

# Prints the value of `key=` in pgbackrest.conf (the first one: pg1-path is in the stanza's section only).
conf_value() { sed -n "s/^$1=//p" "$PGBACKREST_CONFIG" | head -n 1; }

restore() { # $1: data directory; then extra options
  dir=$1
  shift
  as_pg pgbackrest --stanza="$STANZA" --pg1-path="$dir" --type=time --target="$TARGET_TIME" --target-action=promote "$@" restore
}

case $MODE in
  scratch)
    : "${SCRATCH_DIR:?SCRATCH_DIR is required: the new data directory}"
    SCRATCH_PORT=${SCRATCH_PORT:-55432}
    POSTGRES_CONF=${POSTGRES_CONF:-/etc/postgresql/postgresql.conf}
    if [ -d "$SCRATCH_DIR" ] && [ -n "$(ls -A "$SCRATCH_DIR")" ]; then fail "SCRATCH_DIR $SCRATCH_DIR is not empty"; fi
    mkdir -p "$SCRATCH_DIR"
    chmod 0700 "$SCRATCH_DIR"
    own "$SCRATCH_DIR"
    as_pg test -w "$SCRATCH_DIR" || fail "the OS user ${PG_OS_USER:-$(id -un)} cannot reach SCRATCH_DIR $SCRATCH_DIR (a parent directory is not traversable)"
    # Beside it: the scratch server's socket, its hba file and its log.
    side="$SCRATCH_DIR.run"
    mkdir -p "$side"
    chmod 0700 "$side"
    own "$side"
    say "restoring the cluster as it was at $TARGET_TIME into $SCRATCH_DIR"
    restore "$SCRATCH_DIR"
    # Only the superuser, only over the scratch socket (a directory only PG_OS_USER can enter): trust, so that a
    # password changed since TARGET_TIME does not lock the operator out of the copy.
    printf 'local all postgres trust\nlocal all all reject\nhost all all all reject\n' > "$side/pg_hba.conf"
    own "$side/pg_hba.conf"
    say "starting the scratch Postgres (socket $side, port $SCRATCH_PORT, archive_mode=off)"
    as_pg "$PG_BIN_DIR/pg_ctl" -D "$SCRATCH_DIR" -l "$side/postgres.log" -s -w -t 600 \
      -o "-c config_file=$POSTGRES_CONF -c hba_file=$side/pg_hba.conf -c port=$SCRATCH_PORT -c listen_addresses= -c unix_socket_directories=$side -c archive_mode=off -c ssl=off -c shared_buffers=32MB" \
      start || { tail -n 20 "$side/postgres.log" >&2; fail "the scratch Postgres did not start; its log: $side/postgres.log"; }
    # Ready for connections once consistent; done once it has replayed up to TARGET_TIME and promoted.
    tries=0
    until [ "$(as_pg "$PG_BIN_DIR/psql" -h "$side" -p "$SCRATCH_PORT" -U postgres -d postgres -XAtqc 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do
      tries=$((tries + 1))
      [ "$tries" -le 6000 ] || fail "the scratch Postgres did not finish recovering within 10 minutes; see $side/postgres.log"
      sleep 0.1
    done
    say "the scratch cluster is up, as at $TARGET_TIME"
    say "  psql:  psql -h $side -p $SCRATCH_PORT -U postgres   (as $(id -un) ${PG_OS_USER:+or $PG_OS_USER})"
    if [ "$(id -u)" = 0 ]; then
      say "  stop:  setpriv --reuid=$PG_OS_USER --regid=$(id -g "$PG_OS_USER") --init-groups $PG_BIN_DIR/pg_ctl -D $SCRATCH_DIR -m fast stop; rm -rf $SCRATCH_DIR $side"
    else
      say "  stop:  $PG_BIN_DIR/pg_ctl -D $SCRATCH_DIR -m fast stop; rm -rf $SCRATCH_DIR $side"
    fi
    ;;
  in-place)
    data=$(conf_value pg1-path)
    [ -n "$data" ] || fail "pg1-path is not set in $PGBACKREST_CONFIG"
    if [ -f "$data/postmaster.pid" ] && as_pg "$PG_BIN_DIR/pg_ctl" -D "$data" status >/dev/null 2>&1; then
      fail "Postgres is running on $data: stop it first (compose: docker compose stop service pgbouncer postgres)"
    fi
    say "restoring the cluster in place ($data) as it was at $TARGET_TIME (--delta)"
    restore "$data" --delta
    if [ -n "${DISK_RESERVE_MB:-}" ]; then
      as_pg env PGDATA="$data" DISK_RESERVE_MB="$DISK_RESERVE_MB" sh "${RESERVE_SCRIPT:-$here/../init/00-disk-reserve.sh}"
      say "the disk reserve ($DISK_RESERVE_MB MB) is back in $data"
    fi
    say "done: start Postgres (compose: docker compose up -d); it replays WAL up to $TARGET_TIME and promotes"
    ;;
  *) fail "MODE must be scratch or in-place" ;;
esac
