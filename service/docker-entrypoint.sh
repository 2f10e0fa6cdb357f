#!/bin/sh
# The service image's entrypoint (under tini): when POSTGRES_PASSWORD_FILE names a file (compose: the password
# init/setup/setup.sh keeps in the secrets volume), exports its text as POSTGRES_PASSWORD, the one setting the
# service reads it from (src/config.ts), read as the postgres image reads the same file (its text, trailing
# newlines dropped); then execs the command, node dist/server.js, which thus gets tini's signals directly.
# Without POSTGRES_PASSWORD_FILE it changes nothing. service/test/stack/compose.test.ts runs it for real.
set -eu

fail() { printf 'docker-entrypoint: error: %s\n' "$*" >&2; exit 1; }

if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
  [ -z "${POSTGRES_PASSWORD:-}" ] || fail "both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are set (but are exclusive)"
  [ -r "$POSTGRES_PASSWORD_FILE" ] || fail "cannot read POSTGRES_PASSWORD_FILE=$POSTGRES_PASSWORD_FILE (made by compose's setup container: docker compose up -d runs it)"
  POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
  [ -n "$POSTGRES_PASSWORD" ] || fail "POSTGRES_PASSWORD_FILE=$POSTGRES_PASSWORD_FILE is empty"
  export POSTGRES_PASSWORD
  unset POSTGRES_PASSWORD_FILE
fi

exec "$@"
