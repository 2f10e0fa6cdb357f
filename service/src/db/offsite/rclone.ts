// Owns the one program that copies backups off the machine: rclone (Debian's package, the service image's), run
// with an environment of our choosing (PATH, HOME, RCLONE_CONFIG: nothing else of the service's reaches it, no
// password in its argv), bounded by OFFSITE_TIMEOUT_MS, never prompting. Its log comes as JSON lines on stderr:
// read here for what it copied and deleted (file names only) and, on failure, for a category; it can quote the
// remote's answers, paths and URLs, and is never logged or returned (as pg_dump's stderr, dump-restore.ts).
// It lives in db/ beside pg_dump and pg_restore: db/ is where the service's outside programs and systems are run
// and spoken to, and domain/ (src/domain/backups/offsite-copy.ts) says what is copied, in which order, and when to refuse.
import { spawn } from 'node:child_process';
import type { Config } from '../../shared/config.js';
import { OffsiteCopyFailedError, type OffsiteFailureCategory } from '../../shared/errors.js';

/** What one run of rclone did, from its log: the names (relative to the run's root) of what it copied and deleted. */
export interface RcloneRun {
  copied: string[];
  deleted: string[];
}

/** Flags every run gets: no prompt, JSON log lines at INFO (one per file copied or deleted), no periodic stats. */
const COMMON_FLAGS = ['--ask-password=false', '--use-json-log', '--log-level=INFO', '--stats=0', '--retries=2', '--low-level-retries=5'];

/** The most of rclone's stderr kept (its tail) to find a failure's category in; the rest is only counted. */
const STDERR_TAIL_CHARS = 16_384;

/**
 * Why rclone failed, in our words, from its stderr (never passed on). rclone prints "Failed to create file system"
 * when it cannot reach or log in to a remote at all; the patterns below are sftp's (Go's ssh and net packages) and
 * the usual HTTP-based backends' (S3 and the like).
 */
export function rcloneFailureCategory(stderr: string): OffsiteFailureCategory {
  if (/didn't find section in config file|config file .* not found/i.test(stderr)) return 'remote_not_configured';
  if (/knownhosts: key (?:mismatch|is unknown)|host key mismatch|couldn't parse known_hosts_file/i.test(stderr)) return 'host_key_rejected';
  if (/unable to authenticate|permission denied \(publickey|no supported methods remain|InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|Unauthorized|\b401\b|\b403\b|couldn't (?:read|parse) (?:ssh )?private key|failed to (?:read|parse) private key/i.test(stderr)) return 'auth_refused';
  if (/connection refused|no route to host|network is unreachable|i\/o timeout|connection reset|no such host|dial tcp|couldn't connect SSH|handshake failed: EOF|TLS handshake timeout/i.test(stderr)) return 'unreachable';
  return 'other';
}

export class Rclone {
  private readonly config: Config;

  constructor(config: Config) {
    this.config = config;
  }

  /** The environment rclone runs in: where to find programs, a home, and its own config file; nothing else. */
  private env(): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? '/usr/bin:/bin' };
    if (process.env.HOME) env.HOME = process.env.HOME;
    if (this.config.RCLONE_CONFIG) env.RCLONE_CONFIG = this.config.RCLONE_CONFIG;
    return env;
  }

  /**
   * Runs `rclone <args…>` (the common flags added), with `stdin` written to its standard input when given. `what`
   * names the run in an error. Resolves with what it copied and deleted; rejects with an OffsiteCopyFailedError.
   */
  run(what: string, args: string[], stdin?: string): Promise<RcloneRun> {
    return new Promise((resolve, reject) => {
      const child = spawn(this.config.RCLONE_PATH, [...args, ...COMMON_FLAGS], {
        env: this.env(),
        stdio: [stdin === undefined ? 'ignore' : 'pipe', 'ignore', 'pipe'],
        timeout: this.config.OFFSITE_TIMEOUT_MS,
        killSignal: 'SIGKILL',
      });
      const run: RcloneRun = { copied: [], deleted: [] };
      let tail = '';
      let partial = '';
      const readLine = (line: string) => {
        if (!line.startsWith('{')) return;
        try {
          const entry = JSON.parse(line) as { msg?: unknown; object?: unknown };
          if (typeof entry.msg !== 'string' || typeof entry.object !== 'string') return;
          if (entry.msg.startsWith('Copied')) run.copied.push(entry.object);
          else if (entry.msg === 'Deleted') run.deleted.push(entry.object);
        } catch {
          // not one of rclone's JSON log lines: only the tail keeps it, for the category
        }
      };
      child.stderr!.setEncoding('utf8');
      child.stderr!.on('data', (chunk: string) => {
        tail = (tail + chunk).slice(-STDERR_TAIL_CHARS);
        const lines = (partial + chunk).split('\n');
        partial = lines.pop() ?? '';
        lines.forEach(readLine);
      });
      if (stdin !== undefined) {
        child.stdin!.on('error', () => {}); // rclone exiting early closes the pipe: its exit says why
        child.stdin!.end(stdin);
      }
      // A program that could not start at all (RCLONE_PATH wrong): the first settling wins, 'close' may follow.
      child.on('error', () => reject(new OffsiteCopyFailedError(`${what}: rclone could not be started from RCLONE_PATH`, 'other')));
      child.on('close', (code, signal) => {
        readLine(partial);
        if (code === 0) return resolve(run);
        // spawn's timeout sends killSignal: a SIGKILL we did not send ourselves is the OFFSITE_TIMEOUT_MS bound.
        const category: OffsiteFailureCategory = signal === 'SIGKILL' ? 'timeout' : rcloneFailureCategory(tail);
        reject(new OffsiteCopyFailedError(what, category, code ?? undefined));
      });
    });
  }
}
