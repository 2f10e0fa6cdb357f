# Sourced by the runbooks (restore-cluster.sh, recover-app.sh), never run alone: how they run a command as the
# Postgres OS user. pgBackRest and Postgres refuse root, and the files they make must be that user's: as root,
# as_pg runs a command as PG_OS_USER (default postgres) through util-linux's setpriv, the environment kept, and own
# gives files to that user; as anyone else, both leave things as they are (the runbook runs as that user already).
if [ "$(id -u)" = 0 ]; then
  PG_OS_USER=${PG_OS_USER:-postgres}
  as_pg() { setpriv --reuid="$PG_OS_USER" --regid="$(id -g "$PG_OS_USER")" --init-groups -- "$@"; }
  own() { chown "$PG_OS_USER:$(id -g "$PG_OS_USER")" "$@"; }
else
  as_pg() { "$@"; }
  own() { :; }
fi
