/**
 * Runs the built `bulwark` binary as users do: `serve` as a child process, and one-shot CLI
 * commands, each with an explicit environment (never the test runner's own BULWARK_* vars).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const BIN = path.join(ROOT, 'dist/cli/main.js');

/** The parent environment without any Bulwark setting, plus the given ones. */
export function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('BULWARK_') && k !== 'DATABASE_URL' && k !== 'REDIS_URL' && k !== 'NODE_ENV') env[k] = v;
  }
  return { ...env, ...extra };
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function runCli(args: string[], env: Record<string, string>, options: { cwd?: string; input?: string } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: cleanEnv(env), cwd: options.cwd ?? ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.stdin.end(options.input ?? '');
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout, stderr });
    });
  });
}

export interface ServerProcess {
  child: ChildProcess;
  publicUrl: string;
  adminUrl: string;
  output(): string;
  /** Sends SIGTERM and resolves with the exit code. */
  stop(): Promise<number>;
}

/** Starts `bulwark serve` and waits until it has published its URLs in the data dir. */
export async function startServe(env: Record<string, string>, dataDir: string, options: { command?: string[]; timeoutMs?: number } = {}): Promise<ServerProcess> {
  const command = options.command ?? [process.execPath, BIN, 'serve'];
  const child = spawn(command[0] as string, command.slice(1), { env: cleanEnv(env), cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let output = '';
  child.stdout?.on('data', (d) => (output += d));
  child.stderr?.on('data', (d) => (output += d));
  let exited: number | null = null;
  const exit = new Promise<number>((resolve) => child.on('exit', (code) => resolve((exited = code ?? -1))));
  const info = path.join(dataDir, 'server.json');
  const deadline = Date.now() + (options.timeoutMs ?? 60_000);
  while (!existsSync(info)) {
    if (exited !== null) throw new Error(`serve exited with ${exited}:\n${output}`);
    if (Date.now() > deadline) {
      process.kill(-child.pid!, 'SIGKILL');
      throw new Error(`serve did not start in time:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const { publicUrl, adminUrl } = JSON.parse(readFileSync(info, 'utf8')) as { publicUrl: string; adminUrl: string };
  return {
    child,
    publicUrl,
    adminUrl,
    output: () => output,
    async stop() {
      if (exited !== null) return exited;
      // The process group, so `npm start`'s node child stops too.
      process.kill(-child.pid!, 'SIGTERM');
      const timer = setTimeout(() => exited === null && process.kill(-child.pid!, 'SIGKILL'), 20_000);
      const code = await exit;
      clearTimeout(timer);
      return code;
    },
  };
}

/** Every file under a directory, for "the secret is nowhere on disk" checks. */
export function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const full = path.join(dir, name);
    if (statSync(full).isDirectory()) out.push(...filesUnder(full));
    else out.push(full);
  }
  return out;
}
