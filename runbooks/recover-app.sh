#!/bin/sh
# Runbook: recover ONE app as it was at TARGET_TIME, leaving every other app as it is now.
#   1. runbooks/restore-cluster.sh MODE=scratch: the whole cluster as at TARGET_TIME, in a scratch data directory,
#      started on a spare port with archive_mode=off (the live cluster and repository are not touched);
#   2. the app's incarnation at TARGET_TIME, from the scratch cluster's system database (provisioner, table apps);
#   3. pg_dump of its database (custom format) into BACKUP_DIR under the service's own backup name,
#      app_<name>-<incarnation>-<UTC time of the dump, yyyymmddThhmmssmmmZ>.dump, written under a .partial name
#      (0600, owned by BACKUP_OWNER), read back whole by pg_restore, its SHA-256 written beside it (<file>.sha256, as
#      the service writes its own), and renamed when complete, so that the service never lists half a file (the
#      name carries the time of the dump, not TARGET_TIME);
#   4. the scratch cluster stopped and removed (also when a step fails);
#   5. when BASE and ADMIN_KEY are set: POST $BASE/apps/<name>/restore {"file": …}, with "from_deleted_app": true
#      only when the dump's incarnation is not the live app's (GET /backups says: app_exists false). The restore is
#      the service's: it restores as the app's own agent, never as the superuser. Without BASE, the request to
#      make is printed.
# The live app must exist (provision it again first if it was deleted); its database is replaced by the dump.
#
# Settings (environment): APP (the app's name), TARGET_TIME, BACKUP_DIR (the service's: ./backups in compose,
# $STACK_DIR/backups in the local stack), BACKUP_OWNER (uid:gid the service runs as; default: leave as is), BASE
# and ADMIN_KEY (optional; the key is given to curl on its standard input, never in an argument), WORK_DIR (where
# the scratch cluster goes, default a new directory under /tmp, reachable by PG_OS_USER), and those of
# restore-cluster.sh: STANZA, PGBACKREST_CONFIG, PG_OS_USER, PG_BIN_DIR, SCRATCH_PORT, POSTGRES_CONF.
#
# Compose (not run here: no Docker on the machine that tests this): a one-off container of the postgres image with
# the repository, the configuration, ./backups and this folder, as root (it hands the dump to the service's uid):
#   docker compose run --rm --no-deps -v ./backups:/backups -e APP=myapp -e TARGET_TIME='2026-12-07 23:10:00+00' \
#     -e BACKUP_DIR=/backups -e BACKUP_OWNER=1000:1000 --entrypoint sh postgres /runbooks/recover-app.sh
#   then, from the host, the printed POST (or set BASE=http://nginx and ADMIN_KEY: the container has no curl).
# The local stack (as root; the tests' values): PGBACKREST_CONFIG=$STACK_DIR/pgbackrest/pgbackrest.conf,
#   POSTGRES_CONF=$STACK_DIR/pgconf/postgres.conf, BACKUP_DIR=$STACK_DIR/backups, BASE=http://127.0.0.1:8088.
set -eu

: "${APP:?APP is required: the app's name}"
: "${TARGET_TIME:?TARGET_TIME is required: the moment to recover the app as it was, e.g. 2026-12-07 23:10:00+00}"
: "${BACKUP_DIR:?BACKUP_DIR is required: the service's backup directory}"
PG_BIN_DIR=${PG_BIN_DIR:-/usr/lib/postgresql/15/bin}
SCRATCH_PORT=${SCRATCH_PORT:-55432}
here=$(cd "$(dirname "$0")" && pwd)

say() { printf 'recover-app: %s\n' "$*"; }
fail() { printf 'recover-app: error: %s\n' "$*" >&2; exit 1; }

# The service's app names (src/shared/object-names.ts): nothing else reaches a command or a file name.
printf '%s' "$APP" | grep -Eq '^[a-z][a-z0-9_]{0,39}$' || fail "APP must be an app name (lower-case letters, digits, _)"

# as_pg and own: a command, and files, as the Postgres OS user (PG_OS_USER when run as root).
. "$here/as-postgres.sh"

if [ -n "${WORK_DIR:-}" ]; then
  work=$WORK_DIR
  mkdir -p "$work"
else
  work=$(mktemp -d /tmp/pgprov-recover-XXXXXX)
fi
chmod 0755 "$work"
scratch="$work/pgdata"
side="$scratch.run"
partial=
sidecar=

cleanup() {
  status=$?
  if [ -f "$scratch/postmaster.pid" ]; then as_pg "$PG_BIN_DIR/pg_ctl" -D "$scratch" -m fast -s -w stop || true; fi
  rm -rf "$scratch" "$side"
  [ -n "${WORK_DIR:-}" ] || rm -rf "$work"
  [ -z "$partial" ] || rm -f "$partial" ${sidecar:+"$sidecar"}  # a dump cut short: its checksum goes with it
  exit "$status"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

MODE=scratch SCRATCH_DIR=$scratch SCRATCH_PORT=$SCRATCH_PORT sh "$here/restore-cluster.sh"

psql_scratch() { as_pg "$PG_BIN_DIR/psql" -h "$side" -p "$SCRATCH_PORT" -U postgres -XAtq -v ON_ERROR_STOP=1 "$@"; }
incarnation=$(printf '%s\n' "SELECT incarnation FROM apps WHERE app_name = :'app' AND state = 'ready';" | psql_scratch -d provisioner -v app="$APP")
printf '%s' "$incarnation" | grep -Eq '^[0-9a-f]{16}$' || fail "app '$APP' did not exist (or was not ready) at $TARGET_TIME"
say "app '$APP' at $TARGET_TIME: incarnation $incarnation"

mkdir -p "$BACKUP_DIR"
file="app_$APP-$incarnation-$(date -u +%Y%m%dT%H%M%S%3NZ).dump"
partial="$BACKUP_DIR/$file.partial"
# pg_dump (as PG_OS_USER) writes to its stdout; this shell, the directory's owner, writes the file: 0600 from the start.
(umask 077 && as_pg "$PG_BIN_DIR/pg_dump" -h "$side" -p "$SCRATCH_PORT" -U postgres -d "app_$APP" --format=custom > "$partial")
chmod 0600 "$partial"
# Checked whole (pg_restore reads every row without a server) and its SHA-256 written beside it, as the service
# does for its own dumps (src/domain/backups/backup-files.ts): `sha256sum -c` checks it, and so does fetch-offsite.sh.
"$PG_BIN_DIR/pg_restore" --file=/dev/null "$partial" || fail "the dump of app '$APP' does not read back whole"
sidecar="$BACKUP_DIR/$file.sha256"
(umask 077 && printf '%s  %s\n' "$(sha256sum < "$partial" | cut -d ' ' -f 1)" "$file" > "$sidecar")
for made in "$partial" "$sidecar"; do
  if [ -n "${BACKUP_OWNER:-}" ]; then chown "$BACKUP_OWNER" "$made"; elif [ "$(id -u)" = 0 ]; then chown 0:0 "$made"; fi
done
mv -f "$partial" "$BACKUP_DIR/$file"
partial=
say "dumped app '$APP' as at $TARGET_TIME: $BACKUP_DIR/$file"

as_pg "$PG_BIN_DIR/pg_ctl" -D "$scratch" -m fast -s -w stop
rm -rf "$scratch" "$side"
say "the scratch cluster is stopped and removed"

if [ -z "${BASE:-}" ] || [ -z "${ADMIN_KEY:-}" ]; then
  say "now restore it through the service (add \"from_deleted_app\": true if GET /backups lists it with \"app_exists\": false):"
  say "  curl -X POST -H \"Authorization: Bearer \$ADMIN_KEY\" -H 'content-type: application/json' -d '{\"file\":\"$file\"}' \$BASE/apps/$APP/restore"
  exit 0
fi

# The key reaches curl on its standard input (a curl config), never in an argument that ps would show.
api() { # method path [body]
  { printf 'header = "Authorization: Bearer %s"\n' "$ADMIN_KEY"
    [ -z "${3:-}" ] || printf 'header = "content-type: application/json"\ndata = "%s"\n' "$(printf '%s' "$3" | sed 's/["\\]/\\&/g')"
  } | curl -sS --fail-with-body -X "$1" --config - "$BASE$2"
}
# The service's JSON lists each backup as {"file":…,…,"app_exists":…}: is ours of the live app's incarnation?
listing=$(api GET /backups) || fail "GET /backups failed: $listing"
if printf '%s' "$listing" | grep -q "\"file\":\"$file\"[^}]*\"app_exists\":true"; then
  body="{\"file\":\"$file\"}"
elif printf '%s' "$listing" | grep -q "\"file\":\"$file\""; then
  body="{\"file\":\"$file\",\"from_deleted_app\":true}"
  say "the live app '$APP' is another incarnation: restoring with from_deleted_app"
else
  fail "the service does not list $file: is BACKUP_DIR the service's?"
fi
answer=$(api POST "/apps/$APP/restore" "$body") || fail "the service refused the restore: $answer"
say "restored app '$APP' as it was at $TARGET_TIME through the service: $answer"
