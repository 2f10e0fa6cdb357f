// pgbench, Postgres's own load generator (the machine's, next to the stack's Postgres: PG_BIN_DIR), run as a child
// process against a connection string the service returned, exactly as an app's operator would: libpq reads the
// string (sslmode=require), the password goes in PGPASSWORD (never on the command line), and PGSSLROOTCERT names
// the stack's CA, so libpq checks the door's certificate too. Every run is bounded (-T) and is killed if it
// outlives its bound by a minute. pgbench runs under sh, whose `times` then reports the CPU pgbench used (the
// client's share of a connection: its TLS handshake and SCRAM's key derivation). For the benchmark
// (scripts/lib/bench/pooler.ts).
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

export const pgbenchBinary = () => join(process.env.PG_BIN_DIR || '/usr/lib/postgresql/15/bin', 'pgbench');

/** Where pgbench connects: a connection string as the service returned it, and the CA file that checks the door. */
export interface PgbenchTarget {
  connectionString: string;
  caFile: string;
}

export interface PgbenchRunOptions {
  /** pgbench's built-in scripts: TPC-B (sort of), or select-only (-S). */
  script: 'tpcb-like' | 'select-only';
  clients: number;
  seconds: number;
  /** -M: simple, or extended (unnamed statements; named prepared ones do not survive transaction pooling). */
  protocol: 'simple' | 'extended';
  /** -C: a new connection (TLS, SCRAM) for every transaction. */
  connectPerTransaction?: boolean;
  /** -l --log-prefix: a line per transaction in files `<logPrefix>.<pid>`, read back into transactions. */
  logPrefix?: string;
  /** Told pgbench's process id once it runs (to read its CPU while it runs). */
  onStart?: (pid: number) => void;
}

/** One transaction of the per-transaction log (-l). */
export interface PgbenchTransaction {
  client: number;
  /** Microseconds; null when the transaction failed. */
  latencyUs: number | null;
  /** When it ended, microseconds since the epoch. */
  endUs: number;
}

export interface PgbenchResult {
  exitCode: number | null;
  clients: number;
  /** pgbench's own summary; NaN when it printed none (it failed). */
  processed: number;
  failedTransactions: number;
  tps: number;
  latencyAverageMs: number;
  /** Initial connection time, or with -C the average connection time, in ms. */
  connectionMs: number;
  /** Clients that could not connect or lost their session: pgbench's "client N aborted" lines, and every client when its setup failed to connect. */
  refused: number;
  /** The first lines of what pgbench wrote on stderr when it failed. */
  errors: string[];
  /** CPU time pgbench used (user + system), in microseconds. */
  cpuUs: number;
  transactions: PgbenchTransaction[];
}

/** libpq's string without the password, and the environment that gives it the password and the CA. */
function connection(target: PgbenchTarget): { uri: string; env: Record<string, string> } {
  const url = new URL(target.connectionString);
  const password = decodeURIComponent(url.password);
  url.password = '';
  return {
    uri: url.toString(),
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', PGPASSWORD: password, PGSSLROOTCERT: target.caFile, PGCONNECT_TIMEOUT: '10' },
  };
}

/** sh's `times`, last line: the CPU its children used, user then system ("0m1.430000s 0m0.090000s"). */
const CHILDREN_TIMES = /(\d+)m([\d.]+)s (\d+)m([\d.]+)s\s*$/;

/**
 * Runs pgbench with `args`, the target last, under sh (for `times`), in a process group of its own; kills that
 * group (this process's own children) if it outlives `boundMs`.
 */
function runPgbench(target: PgbenchTarget, args: string[], boundMs: number, onStart?: (pid: number) => void): Promise<{ code: number | null; stdout: string; stderr: string; cpuUs: number }> {
  const { uri, env } = connection(target);
  // pgbench in the background so that sh can say its process id first (the first line on stdout).
  const script = '"$@" & echo "pgbench pid $!"; wait $!; status=$?; times >&2; exit $status';
  return new Promise((resolve, reject) => {
    const child = spawn('sh', ['-c', script, 'sh', pgbenchBinary(), ...args, uri], { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    if (onStart) {
      child.stdout.once('data', (chunk: Buffer) => {
        const pid = /^pgbench pid (\d+)/.exec(chunk.toString())?.[1];
        if (pid) onStart(Number(pid));
      });
    }
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr = (stderr + chunk).slice(-200_000)));
    const killer = setTimeout(() => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    }, boundMs);
    child.once('error', (err) => {
      clearTimeout(killer);
      reject(err);
    });
    child.once('close', (code) => {
      clearTimeout(killer);
      const times = CHILDREN_TIMES.exec(stderr);
      const cpuUs = times ? (Number(times[1]) * 60 + Number(times[2]) + Number(times[3]) * 60 + Number(times[4])) * 1e6 : NaN;
      resolve({ code, stdout, stderr: stderr.replace(CHILDREN_TIMES, ''), cpuUs });
    });
  });
}

/** pgbench -i -s `scale`: its tables, made and filled in the target's database (as the app's own role). */
export async function pgbenchInit(target: PgbenchTarget, scale: number): Promise<void> {
  const { code, stderr } = await runPgbench(target, ['-i', '-q', '-s', String(scale)], 600_000);
  if (code !== 0) throw new Error(`pgbench -i failed (exit ${code}): ${stderr.trim().split('\n').slice(-5).join(' / ')}`);
}

/** Reads back the per-transaction logs `<prefix>.<pid>[.<thread>]`: client_id transaction_no time script_no time_epoch time_us. */
export function readTransactionLog(prefix: string): PgbenchTransaction[] {
  const dir = dirname(prefix);
  const name = `${basename(prefix)}.`;
  const transactions: PgbenchTransaction[] = [];
  for (const file of readdirSync(dir).filter((f) => f.startsWith(name))) {
    for (const line of readFileSync(join(dir, file), 'utf8').split('\n')) {
      const fields = line.trim().split(/\s+/);
      if (fields.length < 6) continue;
      const latency = Number(fields[2]);
      transactions.push({ client: Number(fields[0]), latencyUs: Number.isFinite(latency) ? latency : null, endUs: Number(fields[4]) * 1e6 + Number(fields[5]) });
    }
  }
  return transactions;
}

const figure = (text: string, pattern: RegExp) => Number(pattern.exec(text)?.[1] ?? NaN);

/** A run of a built-in script; resolves with pgbench's summary, who was refused, and the transactions logged. */
export async function pgbenchRun(target: PgbenchTarget, options: PgbenchRunOptions): Promise<PgbenchResult> {
  const args = [
    '-n', // no vacuum before the run: the tables are fresh from -i, and a VACUUM per process would only add noise
    ...(options.script === 'select-only' ? ['-S'] : []),
    '-M', options.protocol,
    '-c', String(options.clients),
    '-j', '1',
    '-T', String(options.seconds),
    ...(options.connectPerTransaction ? ['-C'] : []),
    ...(options.logPrefix ? ['-l', `--log-prefix=${options.logPrefix}`] : []),
  ];
  const { code, stdout, stderr, cpuUs } = await runPgbench(target, args, (options.seconds + 60) * 1000, options.onStart);
  // A client that cannot connect at the start ends the whole run ("could not create connection for client N"):
  // none of its clients ran. Later, each client that loses its session is "client N aborted ...".
  const setupFailed = /could not create connection/.test(stderr);
  const aborted = (stderr.match(/client \d+ aborted/g) ?? []).length;
  return {
    exitCode: code,
    clients: options.clients,
    processed: figure(stdout, /number of transactions actually processed: (\d+)/),
    failedTransactions: figure(stdout, /number of failed transactions: (\d+)/),
    tps: figure(stdout, /^tps = ([\d.]+)/m),
    latencyAverageMs: figure(stdout, /latency average = ([\d.]+) ms/),
    connectionMs: figure(stdout, /(?:initial|average) connection time = ([\d.]+) ms/),
    refused: setupFailed ? options.clients : aborted,
    errors: code === 0 ? [] : stderr.trim().split('\n').filter((line) => !/^pgbench \(|^\d+m[\d.]+s /.test(line)).slice(0, 3),
    cpuUs,
    transactions: options.logPrefix ? readTransactionLog(options.logPrefix) : [],
  };
}
