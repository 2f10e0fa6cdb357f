#!/bin/sh
# The TLS certificate Postgres and PgBouncer serve, made on the first start: by compose's one-shot setup
# container (init/setup/setup.sh) and by the local stack (service/scripts/lib/local-tls.ts), with the same steps.
#
# In TLS_DIR: a private certificate authority (ca.crt, ca.key; the key never leaves this directory) and a
# server certificate it signs (server.crt, server.key) naming every host in TLS_HOSTS (comma-separated DNS
# names and IP addresses: the hosts apps' connection strings name), so that clients can check it with
# sslmode=verify-full once they have ca.crt (the service serves it: GET /tls/ca.crt).
#
# Kept from one start to the next. An operator's own certificate: put server.crt and server.key (and the ca.crt
# that signed it) in TLS_DIR before the first start, or over the made ones (then restart); this script never
# replaces a server.crt that is there. Made again only when missing, or when it no longer names every host of
# TLS_HOSTS and this script made it (it then says so).
#
# KEY_COPIES: the server key for each program that serves it, each its own copy with its own owner (Postgres
# refuses a key file others can read): "file=uid:gid,…", e.g. postgres-server.key=999:999. Copied at every
# start, so that a replaced server.key reaches them all.
#
# ECDSA P-256: a handshake costs a fraction of RSA-2048's, which matters when apps open many connections.
set -eu

dir=${TLS_DIR:?set TLS_DIR}
hosts=${TLS_HOSTS:-localhost,127.0.0.1}
days=${TLS_DAYS:-3650}

say() { printf 'tls: %s\n' "$*"; }

mkdir -p "$dir"
umask 077

san=""
for host in $(printf '%s' "$hosts" | tr ',' ' '); do
  case $host in
    *[!0-9.]*) entry="DNS:$host" ;;    # not only digits and dots: a name (or an IPv6 address, below)
    *) entry="IP:$host" ;;
  esac
  case $host in *:*) entry="IP:$host" ;; esac
  san="${san:+$san,}$entry"
done

copy_keys() {
  for entry in $(printf '%s' "${KEY_COPIES:-}" | tr ',' ' '); do
    file=${entry%%=*}
    owner=${entry#*=}
    cp "$dir/server.key" "$dir/.$file.new"
    chmod 0600 "$dir/.$file.new"
    chown "$owner" "$dir/.$file.new"
    mv -f "$dir/.$file.new" "$dir/$file"
  done
}

if [ -s "$dir/server.crt" ] && [ -s "$dir/server.key" ]; then
  if [ ! -f "$dir/.made-here" ] || [ "$(cat "$dir/.made-here")" = "$san" ]; then
    copy_keys
    say "certificate kept: $dir/server.crt"
    exit 0
  fi
  say "the hosts changed (now: $hosts): making the server certificate again"
fi

if [ ! -s "$dir/ca.crt" ] || [ ! -s "$dir/ca.key" ]; then
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/ca.key"
  openssl req -x509 -new -key "$dir/ca.key" -sha256 -days "$days" -subj "/CN=pg-provisioner certificate authority" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$dir/ca.crt"
  say "certificate authority made: $dir/ca.crt"
fi

openssl ecparam -name prime256v1 -genkey -noout -out "$dir/server.key.new"
openssl req -new -key "$dir/server.key.new" -subj "/CN=pg-provisioner" -out "$dir/server.csr"
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' "$san" > "$dir/server.ext"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -sha256 -days "$days" \
  -extfile "$dir/server.ext" -out "$dir/server.crt.new" 2>/dev/null
rm -f "$dir/server.csr" "$dir/server.ext" "$dir/ca.srl"
mv -f "$dir/server.key.new" "$dir/server.key"
mv -f "$dir/server.crt.new" "$dir/server.crt"
printf '%s' "$san" > "$dir/.made-here"
chmod 0644 "$dir/ca.crt" "$dir/server.crt"
chmod 0755 "$dir"
copy_keys
say "server certificate made for $hosts: $dir/server.crt"
