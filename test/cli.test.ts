/**
 * The whole product as a user runs it: `bulwark serve` as a process and the `bulwark` CLI
 * beside it, on the embedded database (CLI through the server's admin API) and on PostgreSQL
 * (CLI straight on the shared store).
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { sql } from 'kysely';
import Anthropic from '@anthropic-ai/sdk';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase } from '../src/store/database.js';
import { MIGRATION_NAMES } from '../src/store/migrations.js';
import { POSTGRES_URL, dropSchema, freshSchemaName } from './helpers/database.js';
import { type ServerProcess, filesUnder, runCli, startServe } from './helpers/process.js';
import { type StandIn, startAnthropicStandIn } from './stand-in/anthropic.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function whoami(server: ServerProcess, key?: string): Promise<Response> {
  return fetch(`${server.publicUrl}/api/whoami`, key ? { headers: { authorization: `Bearer ${key}` } } : {});
}

interface Scenario {
  name: string;
  env(dataDir: string): Record<string, string>;
  cleanup(): Promise<void>;
}

const pgSchema = freshSchemaName();
let standIn: StandIn;
beforeAll(async () => {
  standIn = await startAnthropicStandIn();
});
afterAll(async () => {
  await standIn?.close();
});
const SCENARIOS: Scenario[] = [
  {
    name: 'embedded database (CLI through the running server)',
    env: (dataDir) => ({ BULWARK_DATA_DIR: dataDir, BULWARK_PORT: '0', BULWARK_ADMIN_PORT: '0', BULWARK_UPSTREAM_URL: standIn.url }),
    cleanup: async () => {},
  },
  {
    name: 'PostgreSQL (CLI on the shared store)',
    env: (dataDir) => ({
      BULWARK_DATA_DIR: dataDir,
      BULWARK_PORT: '0',
      BULWARK_ADMIN_PORT: '0',
      DATABASE_URL: POSTGRES_URL,
      BULWARK_DATABASE_SCHEMA: pgSchema,
      BULWARK_UPSTREAM_URL: standIn.url,
    }),
    cleanup: () => dropSchema(pgSchema),
  },
];

describe.each(SCENARIOS)('bulwark on $name', (scenario) => {
  let dataDir: string;
  let env: Record<string, string>;
  let server: ServerProcess;
  const keys: string[] = [];

  async function createKey(args: string[]): Promise<{ id: string; key: string; tenant: string; scopes: string[] }> {
    const result = await runCli(['keys', 'create', ...args, '--json'], env);
    expect(result.code, result.stderr).toBe(0);
    const created = JSON.parse(result.stdout);
    keys.push(created.key);
    return created;
  }

  beforeAll(async () => {
    dataDir = mkdtempSync(path.join(tmpdir(), 'bulwark-e2e-'));
    env = scenario.env(dataDir);
    server = await startServe(env, dataDir);
  });

  afterAll(async () => {
    if (server) await server.stop();
    rmSync(dataDir, { recursive: true, force: true });
    await scenario.cleanup();
  });

  it('answers /health and keeps its data dir private', async () => {
    const response = await fetch(`${server.publicUrl}/health`);
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ status: 'ok', version: expect.any(String) });
    expect(statSync(dataDir).mode & 0o777).toBe(0o700);
    expect(statSync(path.join(dataDir, 'admin.token')).mode & 0o777).toBe(0o600);
  });

  it('stays small after creating its database: the embedded engine\'s initdb memory is not kept', () => {
    // PGlite's initdb instance alone holds about 500 MB; it runs in a child process that exits.
    const status = readFileSync(`/proc/${server.child.pid}/status`, 'utf8');
    const rssKb = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1]);
    expect(rssKb).toBeGreaterThan(0);
    expect(rssKb / 1024).toBeLessThan(400);
  });

  it('creates a key with `keys create --scopes read --json` that /api/whoami accepts', async () => {
    const created = await createKey(['--scopes', 'read', '--name', 'e2e reader']);
    expect(created).toMatchObject({ id: expect.any(String), key: expect.stringMatching(/^bwk_test_/), tenant: 'default', scopes: ['read'] });
    const response = await whoami(server, created.key);
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({ keyId: created.id, keyName: 'e2e reader', tenant: 'default', scopes: ['read'] });
  });

  it('refuses no key, a wrong key, an expired key and a revoked key with 401 in the envelope', async () => {
    const expired = await createKey(['--scopes', 'read', '--expires', '1s']);
    const revoked = await createKey(['--scopes', 'read']);
    expect((await whoami(server, revoked.key)).status).toBe(200);
    const revoke = await runCli(['keys', 'revoke', revoked.id, '--json'], env);
    expect(revoke.code, revoke.stderr).toBe(0);
    // A revocation by another process lands within one second.
    await sleep(1_000);
    const wrong = `${revoked.key.slice(0, -6)}zzzzzz`;
    for (const key of [undefined, wrong, expired.key, revoked.key]) {
      const response = await whoami(server, key);
      expect(response.status).toBe(401);
      const body = await response.json();
      expect(body).toEqual({ error: { code: 'unauthorized', message: expect.any(String), requestId: response.headers.get('x-request-id') } });
    }
  });

  it('refuses a read key on an admin-only route with 403', async () => {
    const reader = await createKey(['--scopes', 'read']);
    const response = await fetch(`${server.adminUrl}/api/keys`, { headers: { authorization: `Bearer ${reader.key}` } });
    expect(response.status).toBe(403);
    expect(((await response.json()) as { error: { code: string } }).error.code).toBe('insufficient_scope');
  });

  it('lists, shows, renames and rotates keys, exiting 3 for an unknown id', async () => {
    const key = await createKey(['--scopes', 'read,write', '--name', 'before']);
    const renamed = await runCli(['keys', 'rename', key.id, 'after', '--json'], env);
    expect(JSON.parse(renamed.stdout).name).toBe('after');
    const rotated = await runCli(['keys', 'rotate', key.id, '--json'], env);
    expect(rotated.code, rotated.stderr).toBe(0);
    const fresh = JSON.parse(rotated.stdout);
    keys.push(fresh.key);
    expect(fresh.rotatedFrom).toBe(key.id);
    await sleep(1_000);
    expect((await whoami(server, key.key)).status).toBe(401);
    expect((await whoami(server, fresh.key)).status).toBe(200);
    const list = JSON.parse((await runCli(['keys', 'list', '--json'], env)).stdout) as { id: string }[];
    expect(list.map((k) => k.id)).toContain(fresh.id);
    expect(list.map((k) => k.id)).not.toContain(key.id);
    const show = await runCli(['keys', 'show', 'NoSuchKey123', '--json'], env);
    expect(show.code).toBe(3);
  });

  it('refuses bad CLI input with exit 2 and a message naming the option', async () => {
    const result = await runCli(['keys', 'create', '--scopes', 'read,NOT VALID'], env);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('--scopes');
  });

  it('shows key lifecycle and failures in `audit tail` and verifies the chain', async () => {
    const tail = await runCli(['audit', 'tail', '--json', '-n', '1000'], env);
    expect(tail.code, tail.stderr).toBe(0);
    const types = (JSON.parse(tail.stdout) as { type: string }[]).map((e) => e.type);
    expect(types).toEqual(expect.arrayContaining(['server.started', 'key.created', 'key.revoked', 'key.rotated', 'auth.failure', 'authz.denied']));
    const onlyKeys = JSON.parse((await runCli(['audit', 'tail', '--json', '--type', 'key.'], env)).stdout) as { type: string }[];
    expect(onlyKeys.every((e) => e.type.startsWith('key.'))).toBe(true);
    const verify = await runCli(['audit', 'verify'], env);
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
    expect(verify.stdout).toMatch(/intact/);
  });

  it('stores an upstream credential read from stdin and proxies with it, then summarises usage', async () => {
    const upstreamKey = `sk-ant-api03-${randomBytes(24).toString('hex')}`;
    standIn.apiKeys.add(upstreamKey);
    const set = await runCli(['credentials', 'set', 'default', '--json'], env, { input: `${upstreamKey}\n` });
    expect(set.code, set.stderr).toBe(0);
    expect(set.stdout + set.stderr).not.toContain(upstreamKey);
    const list = await runCli(['credentials', 'list', '--json'], env);
    expect(JSON.parse(list.stdout)).toEqual([expect.objectContaining({ tenant: 'default', type: 'api_key', source: 'store', active: true })]);
    expect(list.stdout).not.toContain(upstreamKey);
    const audited = await runCli(['audit', 'tail', '--json', '--type', 'credentials.'], env);
    expect(JSON.parse(audited.stdout)).toEqual([expect.objectContaining({ type: 'credentials.set', tenantId: 'default', details: expect.objectContaining({ type: 'api_key', via: 'cli' }) })]);
    expect(audited.stdout).not.toContain(upstreamKey);

    const llm = await createKey(['--scopes', 'llm']);
    // Another process stored the credential: the server's store cache lets it land within 2 s.
    await sleep(2_100);
    const sdk = new Anthropic({ apiKey: llm.key, baseURL: server.publicUrl, maxRetries: 0 });
    const message = await sdk.messages.create({ model: 'claude-sonnet-4-5', max_tokens: 16, messages: [{ role: 'user', content: 'usage please' }] });
    expect(standIn.requests.at(-1)?.headers['x-api-key']).toBe(upstreamKey);

    await sleep(1_500); // the requests row is written off the request path
    const usage = await runCli(['usage', '--json', '--since', '1h'], env);
    expect(usage.code, usage.stderr).toBe(0);
    expect(JSON.parse(usage.stdout).usage).toEqual([
      expect.objectContaining({ tenant: 'default', model: 'claude-sonnet-4-5', requests: 1, errors: 0, inputTokens: message.usage.input_tokens, outputTokens: message.usage.output_tokens }),
    ]);
    const empty = await runCli(['credentials', 'set', 'default'], env, { input: '' });
    expect(empty.code).toBe(2);
  });

  it('passes `doctor --url` probing the running deployment from outside', async () => {
    const result = await runCli(['doctor', '--url', server.publicUrl, '--admin-url', server.adminUrl, '--json'], env);
    expect(result.code, result.stdout).toBe(0);
    const { findings } = JSON.parse(result.stdout) as { findings: { level: string; check: string }[] };
    expect(findings.filter((f) => f.level === 'fail')).toEqual([]);
    expect(findings.map((f) => f.check)).toEqual(expect.arrayContaining(['public.whoami', 'admin.keys']));
  });

  it('stops cleanly on SIGTERM, keeps no key in plaintext anywhere, and detects an edited audit row', async () => {
    expect(await server.stop()).toBe(0);
    expect(existsSync(path.join(dataDir, 'server.json'))).toBe(false);
    const logs = server.output();
    expect(logs).toContain('bulwark stopped');
    const lifecycle = await runCli(['audit', 'tail', '--json', '--type', 'server.'], env);
    expect((JSON.parse(lifecycle.stdout) as { type: string }[]).map((e) => e.type)).toEqual(['server.started', 'server.stopped']);

    const secrets = keys.map((k) => k.split('_').pop() as string);
    expect(secrets.length).toBeGreaterThan(4);
    const database = await openDatabase({ url: env.DATABASE_URL, dataDir, schema: env.BULWARK_DATABASE_SCHEMA ?? 'public' });
    try {
      const everything = JSON.stringify([
        await database.db.selectFrom('api_keys').selectAll().execute(),
        await database.db.selectFrom('audit_events').selectAll().execute(),
        await database.db.selectFrom('tenants').selectAll().execute(),
      ]);
      for (const secret of secrets) {
        expect(logs).not.toContain(secret);
        expect(everything).not.toContain(secret);
      }
      if (!env.DATABASE_URL) {
        const blobs = filesUnder(dataDir).map((f) => readFileSync(f).toString('latin1'));
        for (const secret of secrets) expect(blobs.some((b) => b.includes(secret))).toBe(false);
      }
      const victim = await database.db.selectFrom('audit_events').select(['seq']).where('type', '=', 'key.revoked').executeTakeFirstOrThrow();
      await sql`update audit_events set details = '{"name":"nothing to see"}' where seq = ${victim.seq}`.execute(database.db);
      await database.close();
      const verify = await runCli(['audit', 'verify', '--json'], env);
      expect(verify.code).toBe(1);
      expect(JSON.parse(verify.stdout)).toMatchObject({ ok: false, badSeq: Number(victim.seq) });
    } finally {
      await database.close().catch(() => {});
    }
  });
});

describe('production mode from the command line', () => {
  it('refuses to start with pending migrations until `bulwark migrate` has run', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'bulwark-prod-'));
    const env = {
      BULWARK_MODE: 'production',
      BULWARK_DATA_DIR: dataDir,
      BULWARK_HOST: '127.0.0.1',
      BULWARK_PORT: '0',
      BULWARK_ADMIN_PORT: '0',
      BULWARK_ALLOWED_HOSTS: 'bulwark.example.com',
      BULWARK_ENCRYPTION_KEYS: randomBytes(32).toString('base64'),
    };
    try {
      const refused = await runCli(['serve'], env);
      expect(refused.code).toBe(78);
      expect(refused.stderr).toContain('bulwark migrate');
      const migrate = await runCli(['migrate', '--json'], env);
      expect(migrate.code, migrate.stderr).toBe(0);
      expect(JSON.parse(migrate.stdout).applied).toEqual([...MIGRATION_NAMES]);
      const server = await startServe(env, dataDir);
      try {
        const created = await runCli(['keys', 'create', '--scopes', 'read', '--json'], env);
        const { key } = JSON.parse(created.stdout) as { key: string };
        expect(key).toMatch(/^bwk_live_/);
        expect((await whoami(server, key)).status).toBe(200);
      } finally {
        expect(await server.stop()).toBe(0);
      }
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('refuses to start with exit 78 and one line per problem', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'bulwark-prod-'));
    try {
      const result = await runCli(['serve'], { BULWARK_MODE: 'production', BULWARK_DATA_DIR: dataDir, BULWARK_JWT_SECRET: 'changeme', BULWARK_AUTH: 'off' });
      expect(result.code).toBe(78);
      const lines = result.stderr.split('\n').filter((l) => l.startsWith('  - '));
      expect(lines).toEqual(
        expect.arrayContaining([
          expect.stringContaining('BULWARK_AUTH'),
          expect.stringContaining('BULWARK_ENCRYPTION_KEYS'),
          expect.stringContaining('BULWARK_JWT_SECRET'),
          expect.stringContaining('BULWARK_ALLOWED_HOSTS'),
        ]),
      );
      expect(lines).toHaveLength(4);
      // Printed as built: naming the setting, never its value, and not garbled by masking.
      expect(lines).toContain('  - BULWARK_JWT_SECRET: is shorter than 32 bytes');
      expect(result.stderr).not.toContain('changeme');
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('refuses an unknown setting before anything else, naming it', async () => {
    const result = await runCli(['keys', 'list'], { BULWARK_PROT: '3000' });
    expect(result.code).toBe(78);
    expect(result.stderr).toContain('BULWARK_PROT');
  });
});

describe('quick start', () => {
  it('`npm start` builds and serves /health on 127.0.0.1:3000 with the embedded database, and says how to get the first key', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'bulwark-start-'));
    const server = await startServe({ BULWARK_DATA_DIR: dataDir }, dataDir, { command: ['npm', 'start', '--silent'], timeoutMs: 120_000 });
    try {
      expect(server.publicUrl).toBe('http://127.0.0.1:3000');
      expect(server.adminUrl).toBe('http://127.0.0.1:3001');
      const response = await fetch('http://127.0.0.1:3000/health');
      expect(response.status).toBe(200);
      // The announcement and the first-key hint are written together; wait for the pipe to carry them.
      for (let i = 0; i < 50 && !server.output().includes('listening on'); i++) await sleep(100);
      expect(server.output()).toMatch(/listening on http:\/\/127\.0\.0\.1:3000 .*\n(.*\n)*No API keys yet.*\n.*keys create --name first-key/);
    } finally {
      // npm itself dies of the signal; what matters is that Bulwark under it shut down cleanly.
      await server.stop();
      for (let i = 0; i < 50 && existsSync(path.join(dataDir, 'server.json')); i++) await sleep(100);
      expect(existsSync(path.join(dataDir, 'server.json'))).toBe(false);
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 150_000); // a full build and a new embedded database: slow on a loaded two-core machine
});
