/** A complete in-process Bulwark (runtime and both apps) on a real test database. */
import { Writable } from 'node:stream';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { loadConfig } from '../../src/config/load.js';
import { createAdminApp, createPublicApp } from '../../src/http/app.js';
import { createLogger } from '../../src/http/logger.js';
import { type Runtime, createRuntime, ensureDefaultTenant } from '../../src/http/runtime.js';
import type { Actor } from '../../src/auth/key-service.js';
import { staticPrincipal } from '../../src/auth/verify.js';
import { type Engine, openTestDatabase } from './database.js';

export const OPERATOR: Actor = { principal: staticPrincipal('operator', 'test', 'test operator', ['admin']), via: 'cli' };

export interface TestBulwark {
  runtime: Runtime;
  publicApp: ReturnType<typeof createPublicApp>;
  adminApp: ReturnType<typeof createAdminApp>;
  /** Everything the logger wrote, one JSON line each. */
  logs: string[];
  /** Creates a key as an operator and returns its plaintext and id. */
  createKey(scopes: string[], extra?: { tenant?: string; expiresIn?: string; name?: string }): Promise<{ key: string; id: string }>;
  close(): Promise<void>;
}

export async function startTestBulwark(engine: Engine, env: Record<string, string> = {}): Promise<TestBulwark> {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'bulwark-test-'));
  const config = loadConfig({ env: { BULWARK_DATA_DIR: dataDir, ...env }, cwd: dataDir });
  const testDb = await openTestDatabase(engine);
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
  return {
    runtime,
    publicApp: createPublicApp(runtime),
    adminApp: createAdminApp(runtime),
    logs,
    async createKey(scopes, extra = {}) {
      const result = await runtime.keyService.createKey(OPERATOR, { name: extra.name ?? 'test key', scopes, tenant: extra.tenant, expiresIn: extra.expiresIn });
      if (!result.ok) throw new Error(result.message);
      return { key: result.value.key, id: result.value.id };
    },
    async close() {
      await runtime.drain(2_000);
      await testDb.cleanup();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
