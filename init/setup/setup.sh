#!/bin/sh
# Run by compose's one-shot "setup" container (docker-compose.yml), as root in the pgbouncer image (pgbouncer-image/: it has openssl), at every
# `docker compose up`, before Postgres and the service start; so a fresh clone needs nothing set by hand.
# Not one of Postgres's init scripts: it sits in a subdirectory of init/, which the postgres image's
# entrypoint ("ignoring") and the local stack both skip.
#
# 1. The superuser password, in PASSWORD_FILE (the secrets volume): POSTGRES_PASSWORD from the environment
#    (.env) when it is set; otherwise the one already there; otherwise a new random one (24 bytes as hex, like
#    the local stack's). Postgres reads it through POSTGRES_PASSWORD_FILE when it makes its data directory; the
#    service's entrypoint (service/docker-entrypoint.sh) at every start. Owned by the service's user, group
#    root (how Postgres's root entrypoint reads it), mode 0440.
# 2. The backup directory (./backups, bind-mounted at BACKUP_DIR) owned by the service's user, which then keeps
#    it 0700 itself.
# 3. The TLS certificate Postgres and PgBouncer serve, in TLS_DIR (init/setup/make-tls.sh: made on the first
#    start, kept after), each server's copy of the key owned by its user.
# 4. The directory of PgBouncer's auth_file (POOLER_AUTH_DIR): the service's to write, PgBouncer's group's to
#    read (setgid: the files the service makes there get that group), nobody else's; and PgBouncer's socket
#    directory (POOLER_SOCKET_DIR), PgBouncer's.
# 5. pgBackRest's way in: the superuser's password in a pgpass file (PGBACKREST_PGPASS_FILE, in the secrets
#    volume; the postgres container's PGPASSFILE), `*:*:*:postgres:<password>` with ':' and '\' escaped, owned by
#    Postgres's uid (PG_UID) and 0600; and pgBackRest's repository (PGBACKREST_REPO, its volume), Postgres's,
#    0750 (the service reads it through group PG_GID: docker-compose.yml, group_add).
#
# Needs only CAP_CHOWN (compose drops every other capability). Never prints the password.
set -eu

password_file=${PASSWORD_FILE:-/run/pgprov/postgres-password}
backup_dir=${BACKUP_DIR:-/backups}
uid=${SERVICE_UID:-1000}
gid=${SERVICE_GID:-1000}

say() { printf 'setup: %s\n' "$*"; }
fail() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

dir=$(dirname "$password_file")
mkdir -p "$dir"
chmod 0755 "$dir"

if [ -n "${POSTGRES_PASSWORD:-}" ]; then
  password=$POSTGRES_PASSWORD
  origin="POSTGRES_PASSWORD from .env or the environment"
elif [ -s "$password_file" ]; then
  password=$(cat "$password_file")
  origin="kept from an earlier start"
else
  password=$(head -c 24 /dev/urandom | od -An -v -tx1 | tr -d ' \n')
  origin="made now (first start)"
fi
case $password in
  *'
'*) fail "the superuser password must be one line" ;;
esac
[ -n "$password" ] || fail "the superuser password is empty"

# A new file, complete and with its final mode and owner, then renamed over the old one: a reader sees the old
# password or the new one, never a part of either.
tmp=$(mktemp "$dir/.postgres-password.XXXXXX")
trap 'rm -f "$tmp"' EXIT
printf '%s\n' "$password" > "$tmp"
chmod 0440 "$tmp"
chown "$uid:0" "$tmp"
mv -f "$tmp" "$password_file"
trap - EXIT
say "superuser password in $password_file: $origin"

mkdir -p "$backup_dir"
chown "$uid:$gid" "$backup_dir"
say "backup directory $backup_dir owned by $uid:$gid"

tls_dir=${TLS_DIR:-/run/pgprov-tls}
TLS_DIR=$tls_dir sh "$(dirname "$0")/make-tls.sh"

auth_dir=${POOLER_AUTH_DIR:-/run/pgprov-pooler}
mkdir -p "$auth_dir"
# Back to root first: a chmod by whoever is not the owner would need CAP_FOWNER, and without CAP_FSETID it
# would silently drop the setgid bit. chown keeps a directory's setgid bit.
chown 0:0 "$auth_dir"
chmod 2750 "$auth_dir"
chown "$uid:${POOLER_GID:-1001}" "$auth_dir"
say "PgBouncer's auth_file directory $auth_dir: written by $uid, read by group ${POOLER_GID:-1001}"

# PgBouncer's socket directory (its admin console, for the service): PgBouncer's own. Made here because the
# service, which starts first, would otherwise be the first to mount the volume and leave it root's.
socket_dir=${POOLER_SOCKET_DIR:-/var/run/pgbouncer}
mkdir -p "$socket_dir"
chown 0:0 "$socket_dir"
chmod 0755 "$socket_dir"
chown "${POOLER_UID:-1001}:${POOLER_GID:-1001}" "$socket_dir"
say "PgBouncer's socket directory $socket_dir owned by ${POOLER_UID:-1001}"

# pgBackRest's pgpass file: written like the password file (complete, then renamed), never printed.
pg_uid=${PG_UID:-999}
pg_gid=${PG_GID:-999}
pgpass=${PGBACKREST_PGPASS_FILE:-$dir/pgbackrest.pgpass}
tmp=$(mktemp "$(dirname "$pgpass")/.pgbackrest-pgpass.XXXXXX")
trap 'rm -f "$tmp"' EXIT
escaped=$(printf '%s' "$password" | sed 's/[\\:]/\\&/g')
printf '*:*:*:postgres:%s\n' "$escaped" > "$tmp"
chmod 0600 "$tmp"
chown "$pg_uid:$pg_gid" "$tmp"
mv -f "$tmp" "$pgpass"
trap - EXIT
say "pgBackRest's pgpass file $pgpass, readable by $pg_uid only"

# pgBackRest's repository: Postgres's. Back to root first to set the mode (as for the auth_file's directory).
repo=${PGBACKREST_REPO:-/var/lib/pgbackrest}
mkdir -p "$repo"
chown 0:0 "$repo"
chmod 0750 "$repo"
chown "$pg_uid:$pg_gid" "$repo"
say "pgBackRest's repository $repo owned by $pg_uid:$pg_gid (0750)"
