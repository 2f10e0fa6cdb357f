#!/bin/sh
# fetch-offsite.sh: bring backups back from the off-site copy onto this machine, after the local ones are lost.
#
# Copies <OFFSITE_REMOTE>/dumps (every per-app dump and its .sha256 sidecar) into BACKUP_DIR, checks each dump
# against its sidecar (sha256sum -c), and, when PGBACKREST_REPO_PATH is set, <OFFSITE_REMOTE>/pgbackrest into that
# directory (pgBackRest's repository, owned by PG_OS_USER and its group, as pgBackRest needs; files 0640, directories
# 0750, as pgBackRest makes them). The dumps end 0600, BACKUP_DIR 0700.
# It only adds files: nothing already in BACKUP_DIR or the repository is removed (a dump already there with the
# same size and time is left as it is). Prints what it fetched. Exits non-zero when a dump does not match its
# sidecar (the bad file is renamed <name>.corrupt, so the service does not list it) or rclone fails.
#
# Settings (the environment):
#   RCLONE_CONFIG         rclone's config file defining the remote (the one the service uses)       required
#   OFFSITE_REMOTE        the remote and path, as the service's setting (e.g. offsite:pg-provisioner) required
#   BACKUP_DIR            where the service reads dumps from (local stack: $STACK_DIR/backups;        required
#                         compose: ./backups)
#   PGBACKREST_REPO_PATH  fetch pgBackRest's repository too, into this directory                    optional
#   PG_OS_USER            the owner of the fetched repository (default: postgres)                   optional
#   BACKUP_OWNER          the owner to give BACKUP_DIR's files (compose: 1000:1000, the service's    optional
#                         uid; default: left as written, i.e. whoever runs this)
#   RCLONE                the rclone program (default: rclone)                                       optional
#
# Local stack (as the tests run it: test/stack/offsite.test.ts, "restore drill"):
#   RCLONE_CONFIG=/etc/pg-provisioner/rclone.conf OFFSITE_REMOTE=offsite:pg-provisioner \
#     BACKUP_DIR="$STACK_DIR/backups" sh runbooks/fetch-offsite.sh
# Then restore each app through the API: POST /apps/<name>/restore {"file": "<a fetched dump>"}.
set -eu

: "${RCLONE_CONFIG:?set RCLONE_CONFIG to rclone's config file that defines the remote}"
: "${OFFSITE_REMOTE:?set OFFSITE_REMOTE to the remote and path the service copies to (e.g. offsite:pg-provisioner)}"
: "${BACKUP_DIR:?set BACKUP_DIR to the directory the service reads dumps from}"
RCLONE=${RCLONE:-rclone}
PG_OS_USER=${PG_OS_USER:-postgres}
export RCLONE_CONFIG

remote=${OFFSITE_REMOTE%/}
umask 077

say() { printf '%s\n' "$*"; }

# --- the dumps ----------------------------------------------------------------------------------------------------
mkdir -p "$BACKUP_DIR"
chmod 0700 "$BACKUP_DIR"
# What the remote holds: dumps/ only once the service has copied a dump (rclone makes no empty directory on an
# SFTP remote), so a remote with the cluster's repository alone (no per-app dump yet) has none: nothing to fetch.
remote_dirs=$("$RCLONE" lsf --dirs-only "$remote" --ask-password=false --log-level ERROR)
if printf '%s\n' "$remote_dirs" | grep -qx 'dumps/'; then
  say "fetching dumps: $remote/dumps -> $BACKUP_DIR"
  # copy, never sync: what is already here stays. Only finished dumps and their sidecars; rclone checks each
  # transfer against the remote's hash where the remote gives one.
  "$RCLONE" copy "$remote/dumps" "$BACKUP_DIR" --max-depth 1 --include '*.dump' --include '*.dump.sha256' \
    --ask-password=false --stats 0 --log-level ERROR
else
  say "no dumps on the remote ($remote/dumps is not there)"
fi

cd "$BACKUP_DIR"
fetched=0
bad=0
unchecked=0
for dump in *.dump; do
  [ -e "$dump" ] || continue          # no dump at all: the glob stayed as it was
  chmod 0600 "$dump"
  if [ -n "${BACKUP_OWNER:-}" ]; then chown "$BACKUP_OWNER" "$dump"; fi
  if [ -f "$dump.sha256" ]; then
    chmod 0600 "$dump.sha256"
    if [ -n "${BACKUP_OWNER:-}" ]; then chown "$BACKUP_OWNER" "$dump.sha256"; fi
    # The sidecar names the file by its base name (sha256sum's own format: "<hex>  <file name>"), so check it here.
    if sha256sum --check --status --strict "$dump.sha256" 2>/dev/null; then
      say "  ok        $dump"
      fetched=$((fetched + 1))
    else
      mv -- "$dump" "$dump.corrupt"
      say "  MISMATCH  $dump (renamed $dump.corrupt: it does not match its .sha256)"
      bad=$((bad + 1))
    fi
  else
    say "  unchecked $dump (no .sha256 beside it: it may be incomplete)"
    unchecked=$((unchecked + 1))
  fi
done
cd - >/dev/null
say "dumps: $fetched verified, $unchecked without a checksum, $bad not matching"

# --- pgBackRest's repository (optional) -----------------------------------------------------------------------------
if [ -n "${PGBACKREST_REPO_PATH:-}" ]; then
  say "fetching pgBackRest's repository: $remote/pgbackrest -> $PGBACKREST_REPO_PATH"
  printf '%s\n' "$remote_dirs" | grep -qx 'pgbackrest/' || { say "error: $remote/pgbackrest is not there: no repository was copied off-site" >&2; exit 1; }
  mkdir -p "$PGBACKREST_REPO_PATH"
  # copy, never sync: a repository that is here already keeps what it has. In two steps, as the service sends it
  # (src/domain/backups/offsite-copy.ts): the data files (backups, WAL) first, the .info files last. The service may still
  # be running, copying this repository off the machine on its schedule: until backup.info and archive.info are
  # here it refuses to (the repository looks lost); were they fetched first, it could sync a half-fetched
  # repository to the remote and remove there the WAL not fetched yet.
  "$RCLONE" copy "$remote/pgbackrest" "$PGBACKREST_REPO_PATH" --filter '- *.info' --filter '- *.info.copy' \
    --ask-password=false --stats 0 --log-level ERROR
  "$RCLONE" copy "$remote/pgbackrest" "$PGBACKREST_REPO_PATH" --filter '+ *.info' --filter '+ *.info.copy' --filter '- *' \
    --ask-password=false --stats 0 --log-level ERROR
  # pgBackRest's own modes (directories 0750, files 0640) and PG_OS_USER's group: compose's service reads the
  # repository through that group (999) to copy it off the machine; 0700/0600 would stop every later copy.
  find "$PGBACKREST_REPO_PATH" -type d -exec chmod 0750 {} +
  find "$PGBACKREST_REPO_PATH" -type f -exec chmod 0640 {} +
  chown -R "$PG_OS_USER:" "$PGBACKREST_REPO_PATH"
  say "repository: $(find "$PGBACKREST_REPO_PATH" -type f | wc -l) files, owned by $PG_OS_USER"
  say "next: PGBACKREST_CONFIG=<pgbackrest.conf> pgbackrest --stanza=<stanza> info (as $PG_OS_USER), then restore (runbooks/restore-cluster.sh)"
fi

[ "$bad" -eq 0 ] || exit 1
