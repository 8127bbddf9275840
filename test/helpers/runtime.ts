/** A complete in-process Bulwark (runtime and both apps) on a real test database. */
import { Writable } from 'node:stream';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { type ServerType, serve } from '@hono/node-server';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { loadConfig } from '../../src/config/load.js';
import { createAdminApp, createPublicApp } from '../../src/http/app.js';
import { createLogger } from '../../src/http/logger.js';
import { type Runtime, createRuntime, ensureDefaultTenant } from '../../src/http/runtime.js';
import type { Actor } from '../../src/auth/key-service.js';
import { staticPrincipal } from '../../src/auth/verify.js';
import { type Database, openDatabase } from '../../src/store/database.js';
import { migrateToLatest } from '../../src/store/migrations.js';
import { type Engine, openTestDatabase } from './database.js';

export const OPERATOR: Actor = { principal: staticPrincipal('operator', 'test', 'test operator', ['admin']), via: 'cli' };

export interface TestBulwark {
  runtime: Runtime;
  publicApp: ReturnType<typeof createPublicApp>;
  /** With `listen`: where the public app is served. */
  publicUrl: string;
  /** With `listen`: where the admin app is served. */
  adminUrl: string;
  dataDir: string;
  adminApp: ReturnType<typeof createAdminApp>;
  /** Everything the logger wrote, one JSON line each. */
  logs: string[];
  /** Creates a key as an operator and returns its plaintext and id. */
  createKey(scopes: string[], extra?: { tenant?: string; expiresIn?: string; name?: string }): Promise<{ key: string; id: string }>;
  close(): Promise<void>;
}

export interface TestBulwarkOptions {
  /** Structured settings written to a config file (BULWARK_CONFIG). */
  file?: Record<string, unknown>;
  /** Serve both apps on 127.0.0.1 (for real HTTP clients such as the Anthropic SDK). */
  listen?: boolean;
  /** PGlite on disk under the data dir (so tests can search the database files), not in memory. */
  onDisk?: boolean;
}

export async function startTestBulwark(engine: Engine, env: Record<string, string> = {}, options: TestBulwarkOptions = {}): Promise<TestBulwark> {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'bulwark-test-'));
  const fileEnv: Record<string, string> = {};
  if (options.file) {
    writeFileSync(path.join(dataDir, 'bulwark.json'), JSON.stringify(options.file));
    fileEnv.BULWARK_CONFIG = path.join(dataDir, 'bulwark.json');
  }
  const config = loadConfig({ env: { BULWARK_DATA_DIR: dataDir, ...fileEnv, ...env }, cwd: dataDir });
  const testDb: { database: Database; cleanup(): Promise<void> } = options.onDisk
    ? await (async () => {
        const database = await openDatabase({ dataDir });
        await migrateToLatest(database);
        return { database, cleanup: () => database.close() };
      })()
    : await openTestDatabase(engine);
  const logs: string[] = [];
  const destination = new Writable({
    write(chunk, _encoding, callback) {
      logs.push(...String(chunk).split('\n').filter(Boolean));
      callback();
    },
  });
  const logger = createLogger({ level: 'debug', destination });
  const runtime = createRuntime({ config, logger, database: testDb.database, flushIntervalMs: 20 });
  await ensureDefaultTenant(runtime);
  runtime.fileCredentials.start();
  // Awaited here (not in the server) so a test's first tools/list already shows the upstreams.
  await runtime.startUpstreams();
  const publicApp = createPublicApp(runtime);
  const adminApp = createAdminApp(runtime);
  const servers: ServerType[] = [];
  const listen = (app: typeof publicApp) =>
    new Promise<string>((resolve) => {
      const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(`http://127.0.0.1:${(s.address() as AddressInfo).port}`));
      servers.push(s);
    });
  const publicUrl = options.listen ? await listen(publicApp) : '';
  const adminUrl = options.listen ? await listen(adminApp) : '';
  return {
    runtime,
    publicApp,
    publicUrl,
    adminUrl,
    dataDir,
    adminApp,
    logs,
    async createKey(scopes, extra = {}) {
      const result = await runtime.keyService.createKey(OPERATOR, { name: extra.name ?? 'test key', scopes, tenant: extra.tenant, expiresIn: extra.expiresIn });
      if (!result.ok) throw new Error(result.message);
      return { key: result.value.key, id: result.value.id };
    },
    async close() {
      // Open MCP streams would keep the listeners from closing, as in the real server's shutdown.
      await runtime.mcp.close();
      await Promise.all(servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
      await runtime.drain(2_000);
      await runtime.stop();
      await testDb.cleanup();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
