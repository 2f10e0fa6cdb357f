// A real off-site remote on this machine: Debian's OpenSSH server (sshd, its internal SFTP) on 127.0.0.1 and a
// free port, in a temporary directory of its own, with a host key and a client key made here, and an rclone config
// file (0600) defining the remote `offsite` (type sftp) with that key and the host key pinned in a known_hosts
// file. Not the system's sshd service: a process of the test's own, stopped and started at will (an unreachable
// remote). Runs as root, as CI does (PermitRootLogin prohibit-password: a key only).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { eventually } from './conditions.js';
import { freePort } from './stack.js';

const SSHD = '/usr/sbin/sshd';

export interface SftpRemote {
  /** The rclone remote and path backups go to: `offsite:<dir>`. */
  remote: string;
  /** The rclone config file defining `offsite` (0600). */
  rcloneConfig: string;
  /** The remote's directory on this disk, for assertions. */
  dir: string;
  /** What sshd wrote (its -e log), for a failing test's message. */
  log: string[];
  /** Stops sshd: the remote is unreachable (connection refused) until makeReachable. */
  makeUnreachable(): Promise<void>;
  /** Starts sshd again on the same port, with the same keys; resolves once it answers. */
  makeReachable(): Promise<void>;
  /** Stops sshd and removes everything it had. */
  stop(): Promise<void>;
}

function keygen(file: string, comment: string): void {
  const made = spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', file], { encoding: 'utf8' });
  if (made.status !== 0) throw new Error(`ssh-keygen failed (${made.status}): ${made.stderr}`);
}

/** True once something on the port answers with an SSH banner. */
function answersSsh(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    const done = (answer: boolean) => {
      socket.destroy();
      resolve(answer);
    };
    socket.setTimeout(2_000, () => done(false));
    socket.once('error', () => done(false));
    socket.once('data', (data) => done(data.toString('latin1').startsWith('SSH-2.0-')));
  });
}

export async function startSftpRemote(): Promise<SftpRemote> {
  if (process.getuid?.() !== 0) throw new Error('the SFTP remote runs its own sshd, which needs root (as CI runs)');
  const base = mkdtempSync(join(tmpdir(), 'pgprov-sftp-'));
  const dir = join(base, 'remote');
  mkdirSync(dir, { mode: 0o700 });
  const hostKey = join(base, 'host_ed25519');
  const clientKey = join(base, 'client_ed25519');
  keygen(hostKey, 'pgprov-test-host');
  keygen(clientKey, 'pgprov-test-client');
  const authorizedKeys = join(base, 'authorized_keys');
  writeFileSync(authorizedKeys, readFileSync(`${clientKey}.pub`), { mode: 0o600 });
  // sshd's privilege separation directory, which the package's service would make (and is gone after a reboot).
  mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });

  const port = await freePort();
  const config = join(base, 'sshd_config');
  writeFileSync(
    config,
    [
      'ListenAddress 127.0.0.1',
      `Port ${port}`,
      `HostKey ${hostKey}`,
      `AuthorizedKeysFile ${authorizedKeys}`,
      'PubkeyAuthentication yes',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'UsePAM no',
      'PermitRootLogin prohibit-password',
      // StrictModes checks every directory above AuthorizedKeysFile, up to / for root's key kept outside /root: /tmp
      // is world-writable (1777), so the check would refuse the key. The files here are 0600 in a 0700 directory.
      'StrictModes no',
      `PidFile ${join(base, 'sshd.pid')}`,
      'Subsystem sftp internal-sftp',
      'LogLevel INFO',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  const knownHosts = join(base, 'known_hosts');
  const [keyType, keyData] = readFileSync(`${hostKey}.pub`, 'utf8').trim().split(/\s+/);
  writeFileSync(knownHosts, `[127.0.0.1]:${port} ${keyType} ${keyData}\n`, { mode: 0o600 });

  const rcloneConfig = join(base, 'rclone.conf');
  writeFileSync(
    rcloneConfig,
    [
      '[offsite]',
      'type = sftp',
      'host = 127.0.0.1',
      `port = ${port}`,
      `user = ${userInfo().username}`,
      `key_file = ${clientKey}`,
      `known_hosts_file = ${knownHosts}`,
      // Set, not detected: rclone writes what it detects back into its config file, which in compose is read-only.
      'shell_type = unix',
      'md5sum_command = md5sum',
      'sha1sum_command = sha1sum',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  chmodSync(rcloneConfig, 0o600);

  const log: string[] = [];
  let sshd: ChildProcess | undefined;

  const start = async () => {
    const child = spawn(SSHD, ['-D', '-e', '-f', config], { stdio: ['ignore', 'ignore', 'pipe'] });
    sshd = child;
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => log.push(...chunk.split('\n').filter(Boolean)));
    const up = await eventually(async () => child.exitCode === null && (await answersSsh(port)), (answered) => answered || child.exitCode !== null, 10_000);
    if (!up) throw new Error(`sshd did not answer on 127.0.0.1:${port}:\n${log.join('\n')}`);
  };

  const halt = async () => {
    const child = sshd;
    sshd = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    await exited;
    // Sessions already open are sshd's children of their own; none outlives a test's rclone run, which has ended.
    await eventually(async () => answersSsh(port), (answered) => !answered, 5_000);
  };

  try {
    await start();
  } catch (err) {
    await halt();
    rmSync(base, { recursive: true, force: true });
    throw err;
  }

  return {
    remote: `offsite:${dir}`,
    rcloneConfig,
    dir,
    log,
    makeUnreachable: halt,
    makeReachable: start,
    async stop() {
      await halt();
      rmSync(base, { recursive: true, force: true });
    },
  };
}
