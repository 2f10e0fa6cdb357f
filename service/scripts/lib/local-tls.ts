// The TLS certificate of the local stack's doors (Postgres, PgBouncer): made on the first start by the script
// compose's setup container runs (init/setup/make-tls.sh), with the same steps, in <dir>/tls, and each server's
// copy of the key owned by the OS user that serves it. Kept from one start to the next.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT, StackError, type OsUser } from './parts.js';

export interface TlsFiles {
  dir: string;
  /** The certificate authority's certificate: what clients check the server with (sslmode=verify-full). */
  caCertificate: string;
  serverCertificate: string;
  /** The server key, as Postgres reads it (its own copy, 0600, owned by the user Postgres runs as). */
  postgresKey: string;
  /** The same key, PgBouncer's copy. */
  pgbouncerKey: string;
}

/** The hosts the local stack's certificate names: where apps on this machine connect. */
export const LOCAL_TLS_HOSTS = ['localhost', '127.0.0.1'];

export function tlsFiles(dir: string): TlsFiles {
  return {
    dir,
    caCertificate: join(dir, 'ca.crt'),
    serverCertificate: join(dir, 'server.crt'),
    postgresKey: join(dir, 'postgres-server.key'),
    pgbouncerKey: join(dir, 'pgbouncer-server.key'),
  };
}

/** Makes (or keeps) the certificate in `dir`; the keys' copies owned by `owner` (the servers' OS user), else by this process's. */
export function makeTls(dir: string, owner: OsUser | undefined, onProgress?: (message: string) => void): TlsFiles {
  const files = tlsFiles(dir);
  const ids = owner ? `${owner.uid}:${owner.gid}` : `${process.getuid?.() ?? 0}:${process.getgid?.() ?? 0}`;
  const result = spawnSync('sh', [join(REPO_ROOT, 'init', 'setup', 'make-tls.sh')], {
    encoding: 'utf8',
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      TLS_DIR: dir,
      TLS_HOSTS: LOCAL_TLS_HOSTS.join(','),
      KEY_COPIES: `postgres-server.key=${ids},pgbouncer-server.key=${ids}`,
    },
  });
  if (result.status !== 0) throw new StackError(`could not make the TLS certificate (init/setup/make-tls.sh):\n${result.stderr}${result.stdout}`);
  for (const line of result.stdout.trim().split('\n').filter(Boolean)) onProgress?.(line);
  return files;
}
