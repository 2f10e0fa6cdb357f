// The reference for GET /health (BENCHMARKS.md, section 4), "the ceiling": a minimal Node HTTP server in a
// process of its own, as the service runs, answering every request with the JSON the service's /health
// answers, behind a second nginx made from the same nginx.conf.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { rmSync } from 'node:fs';
import { freePort, LocalStack, throwawayStackSettings } from './local-stack.js';

const SOURCE = (port: number) => `
const body = JSON.stringify({ status: 'ok' });
const server = require('node:http').createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) });
  res.end(body);
});
server.listen(${port}, '127.0.0.1', () => process.stdout.write('listening\\n'));
process.on('SIGTERM', () => process.exit(0)); // a normal exit, so that --cpu-prof writes its profile
`;

interface MinimalHealthServer {
  pid: number | undefined;
  stop(): Promise<void>;
}

/** Starts the server on 127.0.0.1:`port`; `nodeFlags` go to node (the profile: --cpu-prof). */
async function startMinimalHealthServer(port: number, nodeFlags: string[]): Promise<MinimalHealthServer> {
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

/** The minimal server and its nginx; the server can be stopped and started again (with node flags) alone. */
export class HealthCeiling {
  private server?: MinimalHealthServer;
  private readonly nginx: LocalStack;

  private constructor(nginx: LocalStack) {
    this.nginx = nginx;
  }

  static async start(): Promise<HealthCeiling> {
    const settings = await throwawayStackSettings('ceiling', { postgresPassword: '', serviceEnv: {}, onServiceLine: () => {}, servicePort: await freePort() });
    const ceiling = new HealthCeiling(new LocalStack(settings));
    await ceiling.startServer();
    await ceiling.nginx.startNginx();
    return ceiling;
  }

  /** GET /health through the ceiling's nginx. */
  get url(): string {
    return `${this.nginx.httpUrl}/health`;
  }

  get serverPid(): number | undefined {
    return this.server?.pid;
  }

  async startServer(nodeFlags: string[] = []): Promise<void> {
    this.server = await startMinimalHealthServer(this.nginx.settings.servicePort, nodeFlags);
  }

  async stopServer(): Promise<void> {
    await this.server?.stop();
  }

  async stop(): Promise<void> {
    await this.stopServer();
    await this.nginx.stopNginx();
    rmSync(this.nginx.settings.stackDir, { recursive: true, force: true });
  }
}
