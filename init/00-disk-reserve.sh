#!/bin/sh
# Runs once, on an empty data directory (the postgres image's entrypoint, or the local stack), before the
# SQL files. Sets aside DISK_RESERVE_MB (default 256) of the data volume in one file, $PGDATA/disk-reserve.
#
# Why: Postgres 15 has no per-database disk quota. If one app fills the disk, Postgres cannot write its WAL,
# stops, and cannot start again (its crash recovery must write WAL too) until space is freed: not even the
# service's DELETE can reach it. Deleting this file is the operator's way back in; README.md, Troubleshooting,
# "The disk is full", has the steps, and the command that makes the file again.
#
# Written to be both executed and sourced (the image sources init scripts that are not executable), so it
# neither exits nor changes shell options.
if [ "${DISK_RESERVE_MB:-256}" -gt 0 ]; then
    fallocate -l "${DISK_RESERVE_MB:-256}M" "$PGDATA/disk-reserve" 2>/dev/null \
        || dd if=/dev/zero of="$PGDATA/disk-reserve" bs=1M count="${DISK_RESERVE_MB:-256}" status=none
    chmod 600 "$PGDATA/disk-reserve"
fi
