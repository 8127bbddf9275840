/**
 * The processes the benchmark measures: the upstream stand-in and the bare proxy (bench scripts
 * run under tsx), and Bulwark itself (the built CLI, started as `npm start` starts it), with the CLI
 * calls that give it a key and an upstream credential, an RSS sampler, and the row count read
 * back after it has stopped. Every child is stopped by its own pid; a child the parent forgets is
 * still killed when the parent exits.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';

export const REPO_ROOT = path.resolve(import.meta.dirname, '..');
const CLI = path.join(REPO_ROOT, 'dist', 'cli', 'main.js');

/**
 * The Node flags `npm start` gives the server (package.json), so that what is measured is what
 * users run; read from there rather than repeated here.
 */
function serveNodeFlags(): string[] {
  const manifest = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { scripts?: Record<string, string> };
  const start = manifest.scripts?.start ?? '';
  const flags = /\bnode((?: --[^\s]+)*) dist\/cli\/main\.js serve\b/.exec(start);
  if (!flags) throw new Error(`bench: cannot find how npm start runs the server in package.json ('${start}')`);
  return flags[1]!.split(' ').filter(Boolean);
}
/** EX_CONFIG: Bulwark refused its configuration (see src/config/load.ts). */
const EXIT_CONFIG = 78;

const children = new Set<ChildProcess>();
const dataDirs = new Set<string>();
process.once('exit', () => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  for (const dir of dataDirs) rmSync(dir, { recursive: true, force: true });
});
// Node's default on these signals skips 'exit' handlers; exit properly so the children go too.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    process.stderr.write(`bench: ${signal}; stopping\n`);
    process.exit(signal === 'SIGINT' ? 130 : 143);
  });
}

function track(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** Stops one child with SIGTERM, then SIGKILL after `graceMs`; resolves with how it ended. */
export async function stopChild(child: ChildProcess, graceMs = 30_000): Promise<{ code: number | null; signal: string | null; killed: boolean; ms: number }> {
  const started = Date.now();
  if (child.exitCode !== null || child.signalCode !== null) return { code: child.exitCode, signal: child.signalCode, killed: false, ms: 0 };
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
  return { code: child.exitCode, signal: child.signalCode, killed: child.signalCode === 'SIGKILL', ms: Date.now() - started };
}

export interface ScriptProcess {
  child: ChildProcess;
  url: string;
}

/** Runs a bench script under tsx and waits for the `{"url": …}` line it prints when listening. */
export async function startScript(script: string, args: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<ScriptProcess> {
  const child = track(
    spawn(process.execPath, ['--import', 'tsx', path.join(REPO_ROOT, 'bench', script), ...args], {
      cwd: REPO_ROOT,
      env,
      stdio: ['pipe', 'pipe', 'inherit'],
    }),
  );
  const lines = createInterface({ input: child.stdout! });
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${script}: not listening after 30 s`)), 30_000);
    child.once('exit', (code) => reject(new Error(`${script}: exited with ${code} before listening`)));
    lines.once('line', (line) => {
      clearTimeout(timer);
      resolve((JSON.parse(line) as { url: string }).url);
    });
  });
  return { child, url };
}

/** Peak and latest resident set size of a process, from /proc/<pid>/status (Linux). */
export class RssSampler {
  peakBytes = 0;
  latestBytes = 0;
  readonly #timer: NodeJS.Timeout;

  constructor(
    readonly pid: number,
    intervalMs = 100,
  ) {
    this.#timer = setInterval(() => this.sample(), intervalMs);
    this.#timer.unref();
    this.sample();
  }

  sample(): void {
    let status: string;
    try {
      status = readFileSync(`/proc/${this.pid}/status`, 'utf8');
    } catch {
      return; // Gone, or not Linux.
    }
    const kb = /^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1];
    if (kb === undefined) return;
    this.latestBytes = Number(kb) * 1024;
    this.peakBytes = Math.max(this.peakBytes, this.latestBytes);
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}

/** Linux's USER_HZ: /proc reports CPU time in ticks of 1/100 s on every mainstream kernel. */
const TICKS_PER_SECOND = 100;

export interface CpuTime {
  /** User + system CPU of the whole process (every thread), in µs. */
  processUs: number;
  /** The same for its main thread alone (the event loop). */
  mainThreadUs: number;
}

function ticksOf(statFile: string): number {
  const stat = readFileSync(statFile, 'utf8');
  // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

/** CPU time a process has used so far, from /proc (Linux); undefined elsewhere or once it is gone. */
export function cpuTime(pid: number): CpuTime | undefined {
  try {
    const toUs = (ticks: number) => (ticks * 1_000_000) / TICKS_PER_SECOND;
    return { processUs: toUs(ticksOf(`/proc/${pid}/stat`)), mainThreadUs: toUs(ticksOf(`/proc/${pid}/task/${pid}/stat`)) };
  } catch {
    return undefined;
  }
}

export interface BulwarkOptions {
  upstreamUrl: string;
  /** The stand-in API key stored as tenant `default`'s upstream credential. */
  upstreamApiKey: string;
  storeBodies: boolean;
  /** A PostgreSQL URL and a schema of this run's own; without them, the embedded database. */
  database?: { url: string; schema: string };
}

export interface Bulwark {
  child: ChildProcess;
  /** Log records it wrote on stderr (warnings and errors; the level is `warn`): a count and the last few. */
  stderr: { lines: number; tail: string[] };
  dataDir: string;
  publicUrl: string;
  /** A key with scope `llm`, for `x-api-key`. */
  apiKey: string;
  rss: RssSampler;
  /** RSS once started, before any load. */
  idleRssBytes: number;
  /** Runs the CLI against the same data dir and configuration. */
  cli(args: readonly string[], stdin?: string): Promise<string>;
}

export type BulwarkStart = { ok: true; bulwark: Bulwark } | { ok: false; exitCode: number | null; refusedConfig: boolean; stderr: string };

/** The environment Bulwark sees: ours, minus any Bulwark setting inherited from the shell. */
function bulwarkEnv(settings: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (name.startsWith('BULWARK_') || name === 'DATABASE_URL' || name === 'REDIS_URL' || name === 'NODE_ENV' || name.startsWith('BENCH_')) continue;
    env[name] = value;
  }
  return { ...env, ...settings };
}

function runCli(env: NodeJS.ProcessEnv, args: readonly string[], stdin?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(process.execPath, [CLI, ...args], { cwd: REPO_ROOT, env, timeout: 60_000, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`bulwark ${args[0]} ${args[1] ?? ''}: ${error.message.split('\n')[0]}\n${stderr.trim()}`));
      else resolve(stdout);
    });
    child.stdin?.end(stdin ?? '');
  });
}

export async function startBulwark(options: BulwarkOptions): Promise<BulwarkStart> {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'bulwark-bench-'));
  dataDirs.add(dataDir);
  const env = bulwarkEnv({
    BULWARK_DATA_DIR: dataDir,
    BULWARK_PORT: '0',
    BULWARK_ADMIN_PORT: '0',
    BULWARK_UPSTREAM_URL: options.upstreamUrl,
    BULWARK_LOG_LEVEL: 'warn',
    // One load generator on one address: the per-address limit (1200/min) would refuse almost
    // everything. It is raised, not removed, so the limiter still runs on every request.
    BULWARK_RATE_LIMIT_IP: '100000000',
    ...(options.storeBodies ? { BULWARK_STORE_BODIES: 'true' } : {}),
    ...(options.database ? { DATABASE_URL: options.database.url, BULWARK_DATABASE_SCHEMA: options.database.schema } : {}),
  });
  // BENCH_BULWARK_NODE_ARGS: Node flags for the server alone, e.g. a CPU profile of it under load.
  const nodeArgs = [...serveNodeFlags(), ...(process.env.BENCH_BULWARK_NODE_ARGS?.split(/\s+/).filter(Boolean) ?? [])];
  const child = track(spawn(process.execPath, [...nodeArgs, CLI, 'serve'], { cwd: REPO_ROOT, env, stdio: ['ignore', 'inherit', 'pipe'] }));
  // Under load a failing request logs a line each; count them and keep the last few rather than
  // flood the terminal, and keep the raw tail to explain a refusal at start.
  let stderr = '';
  const logged = { lines: 0, tail: [] as string[] };
  child.stderr!.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString('utf8')).slice(-8192);
  });
  createInterface({ input: child.stderr! }).on('line', (line) => {
    // Log records are JSON lines; the plain-text start-up banner is not worth reporting.
    if (!line.startsWith('{')) return;
    logged.lines += 1;
    logged.tail.push(line.slice(0, 500));
    if (logged.tail.length > 5) logged.tail.shift();
  });

  const infoFile = path.join(dataDir, 'server.json');
  const deadline = Date.now() + 60_000;
  while (!existsSync(infoFile)) {
    if (child.exitCode !== null || child.signalCode !== null) {
      rmSync(dataDir, { recursive: true, force: true });
      dataDirs.delete(dataDir);
      return { ok: false, exitCode: child.exitCode, refusedConfig: child.exitCode === EXIT_CONFIG, stderr };
    }
    if (Date.now() > deadline) {
      await stopChild(child, 2_000);
      rmSync(dataDir, { recursive: true, force: true });
      dataDirs.delete(dataDir);
      return { ok: false, exitCode: null, refusedConfig: false, stderr: `${stderr}\n(no server.json after 60 s)` };
    }
    await sleep(50);
  }
  const info = JSON.parse(readFileSync(infoFile, 'utf8')) as { publicUrl: string; adminUrl: string };
  const rss = new RssSampler(child.pid!);
  const cli = (args: readonly string[], stdin?: string) => runCli(env, args, stdin);

  const created = JSON.parse(await cli(['keys', 'create', '--scopes', 'llm', '--name', 'bench', '--json'])) as { key: string };
  await cli(['credentials', 'set', 'default', '--json'], options.upstreamApiKey);
  // Credentials set through the admin API reach the proxy's resolver within two seconds (README).
  await sleep(2_500);
  rss.sample();
  return { ok: true, bulwark: { child, stderr: logged, dataDir, publicUrl: info.publicUrl, apiKey: created.key, rss, idleRssBytes: rss.latestBytes, cli } };
}

export interface RowCount {
  /** Sum of `requests` over `bulwark usage --json --since 1h`, read from the store after stop. */
  rows: number;
  /** Request rows left in the spool (written on overflow or shutdown, replayed on next start). */
  spooledRows: number;
  stop: { code: number | null; signal: string | null; killed: boolean; ms: number };
}

/** Stops Bulwark (SIGTERM drains its write queue), then counts the rows it wrote. */
export async function stopAndCountRows(bulwark: Bulwark): Promise<RowCount> {
  bulwark.rss.sample();
  const stop = await stopChild(bulwark.child);
  bulwark.rss.stop();
  const usage = JSON.parse(await bulwark.cli(['usage', '--json', '--since', '1h'])) as { usage: Array<{ requests: number | string }> };
  const rows = usage.usage.reduce((sum, row) => sum + Number(row.requests), 0);
  let spooledRows = 0;
  const spoolDir = path.join(bulwark.dataDir, 'spool');
  if (existsSync(spoolDir)) {
    for (const file of readdirSync(spoolDir).filter((name) => name.startsWith('requests') && !name.includes('rejected'))) {
      spooledRows += readFileSync(path.join(spoolDir, file), 'utf8').split('\n').filter((line) => line.trim() !== '').length;
    }
  }
  return { rows, spooledRows, stop };
}

export function removeDataDir(bulwark: Bulwark): void {
  rmSync(bulwark.dataDir, { recursive: true, force: true });
  dataDirs.delete(bulwark.dataDir);
}
