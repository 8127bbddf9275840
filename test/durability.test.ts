/**
 * Zero rows lost: a real `bulwark serve` on a PostgreSQL of the test's own, under a bounded
 * load of 2,000 proxied calls on loopback, while that database is crashed and restarted. Every
 * call must answer and end up as exactly one `requests` row.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, startServe, type ServerProcess } from './helpers/process.js';
import { type PrivatePostgres, startPrivatePostgres } from './helpers/private-postgres.js';
import { type StandIn, startAnthropicStandIn } from './stand-in/anthropic.js';

const TOTAL = 2_000;
const CONCURRENCY = 16;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('durability of usage accounting', () => {
  let database: PrivatePostgres;
  let upstream: StandIn;
  let server: ServerProcess;
  let dataDir: string;
  let env: Record<string, string>;

  beforeAll(async () => {
    database = await startPrivatePostgres();
    upstream = await startAnthropicStandIn({ eventIntervalMs: 0 });
    dataDir = mkdtempSync(path.join(tmpdir(), 'bulwark-durable-'));
    env = { BULWARK_DATA_DIR: dataDir, BULWARK_PORT: '0', BULWARK_ADMIN_PORT: '0', DATABASE_URL: database.url, BULWARK_UPSTREAM_URL: upstream.url, BULWARK_LOG_LEVEL: 'warn', BULWARK_RATE_LIMIT_IP: '1000000' };
    const upstreamKey = `sk-ant-api03-${randomBytes(24).toString('hex')}`;
    upstream.apiKeys.add(upstreamKey);
    const credentials = path.join(dataDir, 'credentials');
    mkdirSync(credentials, { recursive: true, mode: 0o700 });
    writeFileSync(path.join(credentials, 'default.json'), JSON.stringify({ type: 'api_key', api_key: upstreamKey }), { mode: 0o600 });
    server = await startServe(env, dataDir);
  }, 120_000);

  afterAll(async () => {
    await server?.stop();
    await upstream?.close();
    database?.destroy();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it('loses no row of 2,000 calls while the database is crashed and restarted under load', async () => {
    const created = await runCli(['keys', 'create', '--scopes', 'llm', '--json'], env);
    expect(created.code, created.stderr).toBe(0);
    const key = (JSON.parse(created.stdout) as { key: string }).key;
    const call = () =>
      fetch(`${server.publicUrl}/v1/messages`, {
        method: 'POST',
        headers: { 'x-api-key': key, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'claude-sonnet-4-5', max_tokens: 8, messages: [{ role: 'user', content: 'durable' }] }),
      }).then(async (r) => {
        await r.arrayBuffer();
        return r.status;
      });
    // Warm the key cache, as any running deployment is.
    expect(await call()).toBe(200);

    // Upstream answers each call after 15 ms, so the load spans the outage.
    upstream.fault = { kind: 'delay-headers', ms: 15, times: TOTAL };
    const statuses: number[] = [];
    let next = 0;
    const worker = async () => {
      while (next < TOTAL) {
        next += 1;
        statuses.push(await call());
      }
    };
    const load = Promise.all(Array.from({ length: CONCURRENCY }, worker));
    await sleep(300);
    database.crash();
    await sleep(1_500);
    database.start();
    await load;
    upstream.fault = undefined;

    expect(statuses).toHaveLength(TOTAL);
    expect(statuses.filter((s) => s !== 200)).toEqual([]);

    // A clean stop drains what is still queued.
    expect(await server.stop()).toBe(0);
    // The outage really happened while rows were being written, and was recovered from.
    expect(server.output()).toMatch(/"queue":"requests".*database write failed; will retry/);
    const client = new pg.Client({ connectionString: database.url });
    await client.connect();
    try {
      const { rows } = await client.query<{ n: string; distinct_ids: string }>(
        "select count(*) as n, count(distinct id) as distinct_ids from requests where path = '/v1/messages' and status = 200",
      );
      expect(Number(rows[0]?.n)).toBe(TOTAL + 1);
      expect(Number(rows[0]?.distinct_ids)).toBe(TOTAL + 1);
    } finally {
      await client.end();
    }
  }, 120_000);
});
