/**
 * `bulwark mcp sessions list|terminate` as an operator runs them: `bulwark serve` as a process
 * on the embedded database, the CLI beside it (through the server's admin API), and a real
 * MCP client connected with the official SDK. The session id never leaves the client; the
 * operator sees and ends sessions by `ref`.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { type IncomingMessage, type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { EXIT } from '../src/cli/exit.js';
import { type CliResult, type ServerProcess, runCli, startServe } from './helpers/process.js';

const CLIENT_INFO = { name: 'bulwark-cli-test', version: '2.3.4' };

interface SessionView {
  ref: string;
  tenant: string;
  keyId: string;
  principalKind: string;
  client: string | null;
  protocolVersion: string;
  createdAt: string;
  lastSeenAt: string;
  expiresAt: string;
}

interface AuditEvent {
  type: string;
  outcome: string;
  keyId: string | null;
  details: Record<string, unknown>;
}

function parseJson<T>(result: CliResult): T {
  expect(result.code, result.stderr).toBe(0);
  return JSON.parse(result.stdout) as T;
}

describe('bulwark mcp sessions against a running server', () => {
  let dataDir: string;
  let env: Record<string, string>;
  let server: ServerProcess;
  let key: { id: string; key: string };
  let client: Client;
  let transport: StreamableHTTPClientTransport;
  let sessionId: string;
  let ref: string;

  /** A raw JSON-RPC ping on the session, as the client's next request would be. */
  function ping(): Promise<Response> {
    return fetch(new URL('/mcp', server.publicUrl), {
      method: 'POST',
      headers: {
        accept: 'application/json, text/event-stream',
        'content-type': 'application/json',
        'mcp-session-id': sessionId,
        authorization: `Bearer ${key.key}`,
      },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }),
      signal: AbortSignal.timeout(10_000),
    });
  }

  /** Polls `audit tail` until `done` holds: audit events reach the store off the request path. */
  async function auditUntil(done: (events: AuditEvent[]) => boolean): Promise<AuditEvent[]> {
    let events: AuditEvent[] = [];
    await vi.waitFor(
      async () => {
        events = parseJson<AuditEvent[]>(await runCli(['audit', 'tail', '--type', 'mcp.', '--json', '-n', '1000'], env));
        expect(done(events)).toBe(true);
      },
      { timeout: 20_000, interval: 500 },
    );
    return events;
  }

  beforeAll(async () => {
    dataDir = mkdtempSync(path.join(tmpdir(), 'bulwark-mcp-cli-'));
    env = { BULWARK_DATA_DIR: dataDir, BULWARK_PORT: '0', BULWARK_ADMIN_PORT: '0' };
    server = await startServe(env, dataDir);
    key = parseJson(await runCli(['keys', 'create', '--scopes', 'read', '--name', 'mcp cli test', '--json'], env));
    transport = new StreamableHTTPClientTransport(new URL('/mcp', server.publicUrl), { requestInit: { headers: { authorization: `Bearer ${key.key}` } } });
    client = new Client(CLIENT_INFO);
    await client.connect(transport);
    sessionId = transport.sessionId as string;
    ref = createHash('sha256').update(sessionId).digest('hex').slice(0, 16);
  }, 120_000);

  afterAll(async () => {
    await client?.close().catch(() => {});
    if (server) await server.stop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  }, 60_000);

  it('lists the live session with --json by ref, key and client, never its id', async () => {
    expect(sessionId).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const result = await runCli(['mcp', 'sessions', 'list', '--json'], env);
    const sessions = parseJson<SessionView[]>(result);
    expect(sessions).toEqual([
      {
        ref,
        tenant: 'default',
        keyId: key.id,
        principalKind: 'key',
        client: `${CLIENT_INFO.name}/${CLIENT_INFO.version}`,
        protocolVersion: expect.any(String),
        createdAt: expect.any(String),
        lastSeenAt: expect.any(String),
        expiresAt: expect.any(String),
      },
    ]);
    expect(result.stdout + result.stderr).not.toContain(sessionId);
    expect(result.stdout).not.toContain(createHash('sha256').update(sessionId).digest('hex'));
  });

  it('filters the list by key and tenant', async () => {
    expect(parseJson<SessionView[]>(await runCli(['mcp', 'sessions', 'list', '--key', key.id, '--json'], env)).map((s) => s.ref)).toEqual([ref]);
    expect(parseJson<SessionView[]>(await runCli(['mcp', 'sessions', 'list', '--tenant', 'default', '--json'], env)).map((s) => s.ref)).toEqual([ref]);
    expect(parseJson<SessionView[]>(await runCli(['mcp', 'sessions', 'list', '--tenant', 'elsewhere', '--json'], env))).toEqual([]);
  });

  it('prints a table without --json', async () => {
    const result = await runCli(['mcp', 'sessions', 'list'], env);
    expect(result.code, result.stderr).toBe(0);
    const [header, ...rows] = result.stdout.trimEnd().split('\n');
    expect(header).toMatch(/^REF\s+TENANT\s+KEY\s+CLIENT\s+PROTOCOL\s+LAST SEEN\s+ENDS$/);
    expect(rows).toHaveLength(1);
    expect(rows[0]?.split(/\s{2,}/).slice(0, 4)).toEqual([ref, 'default', key.id, `${CLIENT_INFO.name}/${CLIENT_INFO.version}`]);
    expect(result.stdout).not.toContain(sessionId);
  });

  it('refuses a malformed ref with the usage exit code without contacting the server', async () => {
    // A data dir that points the CLI at a stand-in admin API, to see whether anything arrives.
    const standInDir = mkdtempSync(path.join(tmpdir(), 'bulwark-mcp-cli-stand-in-'));
    const requests: string[] = [];
    const standIn: Server = createServer((req: IncomingMessage, res) => {
      requests.push(`${req.method} ${req.url}`);
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { code: 'not_found', message: 'stand-in: no such session', requestId: 'stand-in' } }));
    });
    await new Promise<void>((resolve) => standIn.listen(0, '127.0.0.1', resolve));
    try {
      const adminUrl = `http://127.0.0.1:${(standIn.address() as AddressInfo).port}`;
      // The pid must be a live process other than the CLI's: this test's own.
      writeFileSync(path.join(standInDir, 'server.json'), JSON.stringify({ pid: process.pid, adminUrl, publicUrl: adminUrl, database: 'pglite', startedAt: new Date().toISOString() }), { mode: 0o600 });
      writeFileSync(path.join(standInDir, 'admin.token'), 'stand-in-admin-token\n', { mode: 0o600 });
      const standInEnv = { ...env, BULWARK_DATA_DIR: standInDir };

      // The stand-in is reachable: a well-formed ref does reach it.
      const wellFormed = await runCli(['mcp', 'sessions', 'terminate', '0123456789abcdef'], standInEnv);
      expect(wellFormed.code, wellFormed.stderr).toBe(EXIT.notFound);
      expect(requests).toEqual(['DELETE /api/mcp/sessions/0123456789abcdef']);

      requests.length = 0;
      // `--` ends the options: a raw session id is base64url and one in 32 starts with '-'.
      for (const malformed of ['0123456789ABCDEF', '0123456789abcde', '0123456789abcdef0', 'not-a-ref', '../keys/abc', sessionId, '-0123456789abcde']) {
        const result = await runCli(['mcp', 'sessions', 'terminate', '--', malformed], standInEnv);
        expect(result.code, `${malformed}: ${result.stderr}`).toBe(EXIT.usage);
        expect(result.stderr).toMatch(/ref: .* is not a session ref \(16 hex characters/);
      }
      expect(requests).toEqual([]);
    } finally {
      await new Promise<void>((resolve) => standIn.close(() => resolve()));
      rmSync(standInDir, { recursive: true, force: true });
    }
  });

  it('terminates the session by ref: the client then gets 404', async () => {
    // Alive before, so the 404 below is the termination's doing.
    const before = await ping();
    expect(before.status).toBe(200);
    await before.body?.cancel();

    const result = await runCli(['mcp', 'sessions', 'terminate', ref, '--json'], env);
    const ended = parseJson<SessionView>(result);
    expect(ended).toMatchObject({ ref, tenant: 'default', keyId: key.id, client: `${CLIENT_INFO.name}/${CLIENT_INFO.version}` });
    expect(result.stdout).not.toContain(sessionId);

    const after = await ping();
    expect(after.status).toBe(404);
    expect(await after.json()).toMatchObject({ jsonrpc: '2.0', error: { code: -32001 } });
    await expect(client.ping()).rejects.toThrow(/404|session not found/i);
    expect(parseJson<SessionView[]>(await runCli(['mcp', 'sessions', 'list', '--json'], env))).toEqual([]);
    const empty = await runCli(['mcp', 'sessions', 'list'], env);
    expect(empty.stdout.trim()).toBe('No live MCP sessions.');
  });

  it('fails to terminate the same ref again with exit 3 and a message naming it', async () => {
    const again = await runCli(['mcp', 'sessions', 'terminate', ref], env);
    expect(again.code).toBe(EXIT.notFound);
    expect(again.stderr).toContain(`No live MCP session with ref '${ref}'`);
    expect(again.stdout).toBe('');
  });

  it('shows the session starting and being terminated in `audit tail --type mcp.`', async () => {
    const events = await auditUntil((list) => list.some((e) => e.type === 'mcp.session_terminated'));
    expect(events.every((e) => e.type.startsWith('mcp.'))).toBe(true);
    expect(events).toContainEqual(
      expect.objectContaining({ type: 'mcp.session_started', outcome: 'success', keyId: key.id, details: expect.objectContaining({ ref, client: `${CLIENT_INFO.name}/${CLIENT_INFO.version}` }) }),
    );
    expect(events).toContainEqual(
      expect.objectContaining({ type: 'mcp.session_terminated', outcome: 'success', details: expect.objectContaining({ ref, ownerKeyId: key.id, via: 'cli' }) }),
    );
    const text = JSON.stringify(events);
    expect(text).not.toContain(sessionId);
    expect(text).not.toContain(key.key);
  });
});
