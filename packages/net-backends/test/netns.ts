/**
 * Network namespaces for real-peer tests: each test makes its own, with unique
 * names, and deletes them in `finally` even when it fails. Addresses are taken
 * from 10.200.0.0/16 and exist only inside these namespaces.
 */
import { execFileSync } from 'node:child_process';

const APT = 'apt-get install -y --no-install-recommends iproute2 iputils-ping';
let counter = 0;

/** Fails (never skips) when the test cannot run here, naming the fix. */
export function requireRootAndTools(...tools: string[]): void {
  if (process.getuid?.() !== 0) throw new Error('real-peer network tests need root (network namespaces, TAP): run the suite as root');
  for (const t of ['ip', ...tools]) {
    try {
      execFileSync('sh', ['-c', `command -v ${t}`], { stdio: 'ignore' });
    } catch (e) {
      throw new Error(`${t} is missing: ${t === 'tshark' ? 'apt-get install -y --no-install-recommends tshark' : APT}`, { cause: e });
    }
  }
}

export function sh(cmd: string, args: string[], timeout = 10_000): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', timeout, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as { stderr?: string; stdout?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${err.stderr || err.stdout || err.message}`, { cause: e });
  }
}

/** A unique short token for names (interface names are at most 15 bytes). */
export function uniq(): string {
  counter++;
  return `${(process.pid % 10000).toString(36)}${counter.toString(36)}${Math.floor(Math.random() * 36 ** 2).toString(36)}`;
}

/** A distinct /24 inside 10.200.0.0/16 per call in this process (third octet). */
export function subnet(): number {
  counter++;
  return ((process.pid * 7 + counter * 13) % 250) + 1;
}

export class Netns {
  private constructor(readonly name: string) {}

  static create(prefix: string): Netns {
    const name = `${prefix}-${uniq()}`;
    sh('ip', ['netns', 'add', name]);
    const ns = new Netns(name);
    // No IPv6 chatter (router/neighbour solicitations) on test links.
    ns.exec('sysctl', ['-qw', 'net.ipv6.conf.all.disable_ipv6=1']);
    ns.exec('sysctl', ['-qw', 'net.ipv6.conf.default.disable_ipv6=1']);
    ns.exec('ip', ['link', 'set', 'lo', 'up']);
    return ns;
  }

  exec(cmd: string, args: string[], timeout = 10_000): string {
    return sh('ip', ['netns', 'exec', this.name, cmd, ...args], timeout);
  }

  ip(...args: string[]): string {
    return sh('ip', ['-n', this.name, ...args]);
  }

  delete(): void {
    try {
      sh('ip', ['netns', 'delete', this.name]);
    } catch {
      // Already gone.
    }
  }
}
