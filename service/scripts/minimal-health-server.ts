// The reference for GET /health (BENCHMARKS.md, section 4): a minimal Node HTTP server in a process of its own,
// as the service runs, answering every request with the same JSON the service's /health answers.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';

const SOURCE = (port: number) => `
const body = JSON.stringify({ status: 'ok' });
const server = require('node:http').createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) });
  res.end(body);
});
server.listen(${port}, '127.0.0.1', () => process.stdout.write('listening\\n'));
process.on('SIGTERM', () => process.exit(0)); // a normal exit, so that --cpu-prof writes its profile
`;

export interface MinimalHealthServer {
  pid: number | undefined;
  stop(): Promise<void>;
}

/** Starts the server on 127.0.0.1:`port`; `nodeFlags` go to node (the profile: --cpu-prof). */
export async function startMinimalHealthServer(port: number, nodeFlags: string[] = []): Promise<MinimalHealthServer> {
  const child: ChildProcess = spawn(process.execPath, [...nodeFlags, '-e', SOURCE(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
  await once(child.stdout!, 'data');
  return {
    pid: child.pid,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      await exited;
    },
  };
}
