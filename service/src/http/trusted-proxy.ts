// Owns whose X-Forwarded-For the service believes (TRUSTED_PROXY): only the immediate peer (hop 0), and only
// when its address is one of the configured IP addresses or one a configured host name resolves to. Host
// names (compose's `nginx`) are resolved at start, every REFRESH_MS, and on demand when a peer outside the set
// sends X-Forwarded-For (nginx may start after the service, or be recreated with a new address), at most once
// per ON_DEMAND_GAP_MS. Until a name resolves, no address is trusted for it; a name that stops existing
// (ENOTFOUND) loses its addresses; any other failure keeps the last answer. A lookup never blocks a request.
import { BlockList, isIP, isIPv6 } from 'node:net';
import { lookup as dnsLookup } from 'node:dns/promises';
import type { FastifyBaseLogger } from 'fastify';

const REFRESH_MS = 10_000;
const ON_DEMAND_GAP_MS = 1_000;

export type ResolveHost = (hostname: string) => Promise<Array<{ address: string }>>;

export interface TrustedProxyOptions {
  /** Tests: a stand-in for node:dns lookup (all addresses). */
  lookup?: ResolveHost;
  /** Tests: the clock that spaces on-demand lookups. */
  now?: () => number;
}

type ProxyLog = Pick<FastifyBaseLogger, 'info' | 'warn'>;

const resolveAll: ResolveHost = (hostname) => dnsLookup(hostname, { all: true });

const family = (address: string) => (isIPv6(address) ? 'ipv6' : 'ipv4');

/** The allowlist of addresses: BlockList compares IPv4-mapped IPv6 (::ffff:1.2.3.4) and IPv4 forms alike. */
function addressSet(addresses: Iterable<string>): BlockList {
  const set = new BlockList();
  for (const address of addresses) set.addAddress(address, family(address));
  return set;
}

export class TrustedProxies {
  private readonly addresses: string[];
  private readonly hostnames: string[];
  private readonly lookup: ResolveHost;
  private readonly now: () => number;
  /** The addresses each host name resolved to last, and the newest lookup of it whose answer was applied. */
  private readonly resolved = new Map<string, { addresses: string[]; generation: number; problem?: string }>();
  private readonly started = new Map<string, number>();
  private allowed: BlockList;
  private timer?: NodeJS.Timeout;
  private running = false;
  private lastOnDemand = Number.NEGATIVE_INFINITY;
  private log?: ProxyLog;

  /** `entries`: IP addresses and host names, as TRUSTED_PROXY lists them. */
  constructor(entries: readonly string[], { lookup = resolveAll, now = Date.now }: TrustedProxyOptions = {}) {
    this.addresses = entries.filter((entry) => isIP(entry) !== 0);
    this.hostnames = entries.filter((entry) => isIP(entry) === 0);
    this.lookup = lookup;
    this.now = now;
    this.allowed = addressSet(this.addresses);
  }

  /**
   * Fastify's trustProxy function: may `address`, `hop` steps from the service, be believed about the address
   * before it? Only the immediate peer (hop 0), and only a trusted proxy. Fastify asks only when the request
   * carries X-Forwarded-* headers, so an unknown peer here is what makes the host names be looked up again.
   */
  readonly trusts = (address: string | undefined, hop: number): boolean => {
    if (hop !== 0 || !address) return false;
    if (this.allowed.check(address, family(address))) return true;
    this.refreshOnDemand();
    return false;
  };

  /** Resolves the host names now and every REFRESH_MS until stop(). */
  start(log: ProxyLog): void {
    if (this.running || this.hostnames.length === 0) return;
    this.log = log;
    this.running = true;
    void this.refresh();
    this.timer = setInterval(() => void this.refresh(), REFRESH_MS);
    this.timer.unref();
  }

  /** Stops resolving; a lookup still under way is ignored when it answers. */
  stop(): void {
    this.running = false;
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private refreshOnDemand(): void {
    if (!this.running || this.now() - this.lastOnDemand < ON_DEMAND_GAP_MS) return;
    this.lastOnDemand = this.now();
    void this.refresh();
  }

  private async refresh(): Promise<void> {
    await Promise.all(this.hostnames.map((hostname) => this.resolve(hostname)));
  }

  /** One lookup of `hostname`. Answers may come back out of order (a stuck one must not block later ones): only the newest counts. */
  private async resolve(hostname: string): Promise<void> {
    const generation = (this.started.get(hostname) ?? 0) + 1;
    this.started.set(hostname, generation);
    const answer = await this.lookup(hostname).then(
      (found) => ({ addresses: [...new Set(found.map((entry) => entry.address))].sort() }),
      (err: unknown) => ({ problem: String((err as { code?: unknown } | null)?.code ?? err) }),
    );
    const last = this.resolved.get(hostname);
    if (!this.running || (last && last.generation > generation)) return;
    let addresses: string[];
    if ('problem' in answer) {
      if (answer.problem !== last?.problem) this.log?.warn({ trustedProxy: hostname, code: answer.problem }, 'could not resolve a TRUSTED_PROXY host name');
      addresses = answer.problem === 'ENOTFOUND' ? [] : (last?.addresses ?? []);
    } else {
      addresses = answer.addresses;
      if (addresses.join() !== last?.addresses.join()) this.log?.info({ trustedProxy: hostname, addresses }, 'TRUSTED_PROXY host name resolved');
    }
    this.resolved.set(hostname, { addresses, generation, problem: 'problem' in answer ? answer.problem : undefined });
    this.allowed = addressSet([...this.addresses, ...[...this.resolved.values()].flatMap((entry) => entry.addresses)]);
  }
}
