/**
 * What the CLI's management commands can do, and the two ways it does them: directly on the
 * store, or — while a server holds the embedded database — through that server's admin API,
 * authenticated by the token the server wrote into the data dir. Both end in the same
 * `KeyService`, so behaviour and audit events are identical.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { TLSSocket } from 'node:tls';
import { Agent, buildConnector, fetch } from 'undici';
import type { StoredAuditEvent, TailOptions, VerifyResult } from '../audit/log.js';
import type { CreateKeyInput, CreatedKey, FailureCode, KeyView, Result, TenantView } from '../auth/key-service.js';
import { staticPrincipal } from '../auth/verify.js';
import type { McpSessionView } from '../mcp/sessions.js';
import { openToolPayloads } from '../mcp/payloads.js';
import type { Config } from '../config/load.js';
import type { CredentialView, UsageQuery, UsageRow } from '../proxy/management.js';
import type { PurgeResult, RotationResult } from '../proxy/retention.js';
import type { Logger } from '../http/logger.js';
import { type Runtime, createRuntime } from '../http/runtime.js';
import { openDatabase } from '../store/database.js';
import { prepareDataDir, readAdminToken, runningServer } from '../store/data-dir.js';
import { migrateToLatest, pendingMigrations } from '../store/migrations.js';
import { CliError, EXIT, unwrap } from './exit.js';

export interface Operations {
  /** How the CLI reached the store, for messages. */
  readonly via: string;
  createKey(input: CreateKeyInput): Promise<Result<CreatedKey>>;
  listKeys(filter: { tenant?: string | undefined; includeRevoked?: boolean }): Promise<Result<KeyView[]>>;
  getKey(id: string): Promise<Result<KeyView>>;
  renameKey(id: string, name: string): Promise<Result<KeyView>>;
  revokeKey(id: string): Promise<Result<KeyView>>;
  rotateKey(id: string, options: { grace?: string | undefined }): Promise<Result<CreatedKey & { previous: KeyView }>>;
  createTenant(id: string, name?: string): Promise<Result<TenantView>>;
  listTenants(): Promise<Result<TenantView[]>>;
  setCredential(tenant: string, input: unknown): Promise<Result<CredentialView>>;
  removeCredential(tenant: string): Promise<Result<{ tenant: string; removed: boolean }>>;
  listCredentials(): Promise<CredentialView[]>;
  usage(query: UsageQuery): Promise<UsageRow[]>;
  purge(): Promise<Result<PurgeResult>>;
  rotateEncryption(): Promise<Result<RotationResult>>;
  /** With `payloads`, tool-call payloads are opened (operators; the CLI is one). */
  auditTail(options: TailOptions & { payloads?: boolean }): Promise<StoredAuditEvent[]>;
  auditVerify(): Promise<VerifyResult>;
  listMcpSessions(filter: { tenant?: string | undefined; keyId?: string | undefined }): Promise<McpSessionView[]>;
  terminateMcpSession(ref: string): Promise<Result<McpSessionView>>;
  close(): Promise<void>;
}

const CLI_ACTOR = { principal: staticPrincipal('operator', 'cli', 'bulwark CLI', ['admin']), via: 'cli' as const };

/** Picks the way in: the running server's admin API for a held embedded database, else the store. */
export async function openOperations(config: Config, logger: Logger): Promise<Operations> {
  if (!config.database.url) {
    const server = runningServer(config.dataDir);
    if (server) {
      const token = readAdminToken(config.dataDir);
      if (!token) throw new CliError(`A server (pid ${server.pid}) holds ${config.dataDir} but its admin token is unreadable; run the CLI as the server's user.`, EXIT.unavailable);
      return new RemoteOperations(server.adminUrl, token, config.tls.admin && config.tls.cert ? readFileSync(config.tls.cert) : undefined);
    }
  }
  return openDirect(config, logger);
}

export async function openDirect(config: Config, logger: Logger): Promise<LocalOperations> {
  if (!config.database.url) prepareDataDir(config.dataDir);
  let database;
  try {
    database = await openDatabase({ url: config.database.url, dataDir: config.dataDir, schema: config.database.schema });
    await database.ping();
  } catch (err) {
    throw new CliError(`Cannot open the database: ${(err as Error).message}`, EXIT.unavailable);
  }
  try {
    if (config.mode === 'production') {
      const pending = await pendingMigrations(database);
      if (pending.length) throw new CliError(`The database needs migrations (${pending.join(', ')}); run "bulwark migrate" first.`, EXIT.config);
    } else {
      await migrateToLatest(database);
    }
  } catch (err) {
    await database.close();
    throw err;
  }
  return new LocalOperations(createRuntime({ config, logger, database, flushIntervalMs: 50 }));
}

export class LocalOperations implements Operations {
  readonly via = 'store';
  constructor(readonly runtime: Runtime) {}

  createKey(input: CreateKeyInput) {
    return this.runtime.keyService.createKey(CLI_ACTOR, input);
  }
  listKeys(filter: { tenant?: string | undefined; includeRevoked?: boolean }) {
    return this.runtime.keyService.listKeys(CLI_ACTOR, filter);
  }
  getKey(id: string) {
    return this.runtime.keyService.getKey(CLI_ACTOR, id);
  }
  renameKey(id: string, name: string) {
    return this.runtime.keyService.renameKey(CLI_ACTOR, id, name);
  }
  revokeKey(id: string) {
    return this.runtime.keyService.revokeKey(CLI_ACTOR, id);
  }
  rotateKey(id: string, options: { grace?: string | undefined }) {
    return this.runtime.keyService.rotateKey(CLI_ACTOR, id, options);
  }
  createTenant(id: string, name?: string) {
    return this.runtime.keyService.createTenant(CLI_ACTOR, id, name);
  }
  listTenants() {
    return this.runtime.keyService.listTenants(CLI_ACTOR);
  }
  setCredential(tenant: string, input: unknown) {
    return this.runtime.proxyManagement.setCredential(CLI_ACTOR, tenant, input);
  }
  removeCredential(tenant: string) {
    return this.runtime.proxyManagement.removeCredential(CLI_ACTOR, tenant);
  }
  listCredentials() {
    this.runtime.fileCredentials.scan();
    return this.runtime.proxyManagement.listCredentials(CLI_ACTOR);
  }
  usage(query: UsageQuery) {
    return this.runtime.proxyManagement.usage(CLI_ACTOR, query);
  }
  purge() {
    return this.runtime.proxyManagement.purgeNow(CLI_ACTOR);
  }
  rotateEncryption() {
    return this.runtime.proxyManagement.rotateEncryption(CLI_ACTOR);
  }
  async auditTail({ payloads, ...options }: TailOptions & { payloads?: boolean }) {
    const events = await this.runtime.auditReader.tail(options);
    return payloads ? openToolPayloads(this.runtime.keyRing, events) : events;
  }
  auditVerify() {
    return this.runtime.auditReader.verify();
  }
  listMcpSessions(filter: { tenant?: string | undefined; keyId?: string | undefined }) {
    return this.runtime.mcp.listSessions(CLI_ACTOR, filter);
  }
  terminateMcpSession(ref: string) {
    return this.runtime.mcp.terminateSession(CLI_ACTOR, ref);
  }
  async close() {
    const unwritten = await this.runtime.drain(5_000);
    await this.runtime.stop();
    await this.runtime.database.close();
    if (unwritten) throw new CliError(`${unwritten} audit record(s) could not be written; they are in ${this.runtime.config.dataDir}/spool.`, EXIT.unavailable);
  }
}

interface ErrorBody {
  error?: { code?: string; message?: string };
}

const REMOTE_FAILURE: Record<string, FailureCode> = {
  not_found: 'not_found',
  validation_failed: 'validation_failed',
  bad_request: 'validation_failed',
  invalid_json: 'validation_failed',
  conflict: 'conflict',
  forbidden: 'forbidden',
};

/**
 * A dispatcher that accepts exactly the server's own certificate, whatever its issuer or names:
 * the CLI reaches the admin listener by address, and knows the certificate from the config.
 */
function pinnedDispatcher(certificatePem: Buffer): Agent {
  const expected = new X509Certificate(certificatePem).fingerprint256;
  // Chain and name checks are replaced by the pin, which is stricter than both.
  const connect = buildConnector({ rejectUnauthorized: false });
  return new Agent({
    connect(options, callback) {
      connect(options, (err, socket) => {
        if (err || !socket) return callback(err ?? new Error('no socket'), null);
        const presented = (socket as TLSSocket).getPeerCertificate?.().fingerprint256;
        if (presented !== expected) {
          socket.destroy();
          return callback(new Error('the admin listener presented a certificate other than BULWARK_TLS_CERT'), null);
        }
        callback(null, socket);
      });
    },
  });
}

export class RemoteOperations implements Operations {
  readonly via: string;
  readonly #dispatcher: Agent | undefined;
  constructor(
    private readonly adminUrl: string,
    private readonly token: string,
    certificatePem?: Buffer,
  ) {
    this.via = `server at ${adminUrl}`;
    this.#dispatcher = adminUrl.startsWith('https:') && certificatePem ? pinnedDispatcher(certificatePem) : undefined;
  }

  async #call<T>(method: string, path: string, body?: unknown, timeoutMs = 15_000): Promise<Result<T>> {
    let response: Response;
    try {
      response = await fetch(new URL(path, this.adminUrl), {
        ...(this.#dispatcher ? { dispatcher: this.#dispatcher } : {}),
        method,
        headers: { authorization: `Bearer ${this.token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      // fetch says only "fetch failed"; the reason (refused, certificate) is its cause.
      const cause = (err as Error).cause as Error | undefined;
      throw new CliError(`Cannot reach the running server's admin API at ${this.adminUrl}: ${cause?.message ?? (err as Error).message}`, EXIT.unavailable);
    }
    const payload = (await response.json().catch(() => ({}))) as T & ErrorBody;
    if (response.ok) return { ok: true, value: payload };
    const code = payload.error?.code ?? '';
    const failure = REMOTE_FAILURE[code];
    if (failure) return { ok: false, code: failure, message: payload.error?.message ?? code };
    throw new CliError(`The server answered ${response.status}: ${payload.error?.message ?? 'no message'}`, response.status === 401 ? EXIT.unavailable : EXIT.internal);
  }

  /** A failure the server named (bad input, not found) exits as it would have locally. */
  #value<T>(result: Result<T>): T {
    return unwrap(result);
  }

  createKey(input: CreateKeyInput) {
    return this.#call<CreatedKey>('POST', '/api/keys', input);
  }
  async listKeys(filter: { tenant?: string | undefined; includeRevoked?: boolean }) {
    const q = new URLSearchParams();
    if (filter.tenant) q.set('tenant', filter.tenant);
    if (filter.includeRevoked) q.set('all', 'true');
    const r = await this.#call<{ keys: KeyView[] }>('GET', `/api/keys?${q}`);
    return r.ok ? { ok: true as const, value: r.value.keys } : r;
  }
  getKey(id: string) {
    return this.#call<KeyView>('GET', `/api/keys/${encodeURIComponent(id)}`);
  }
  renameKey(id: string, name: string) {
    return this.#call<KeyView>('PATCH', `/api/keys/${encodeURIComponent(id)}`, { name });
  }
  revokeKey(id: string) {
    return this.#call<KeyView>('POST', `/api/keys/${encodeURIComponent(id)}/revoke`);
  }
  rotateKey(id: string, options: { grace?: string | undefined }) {
    return this.#call<CreatedKey & { previous: KeyView }>('POST', `/api/keys/${encodeURIComponent(id)}/rotate`, options.grace ? { grace: options.grace } : {});
  }
  createTenant(id: string, name?: string) {
    return this.#call<TenantView>('POST', '/api/tenants', name ? { id, name } : { id });
  }
  async listTenants() {
    const r = await this.#call<{ tenants: TenantView[] }>('GET', '/api/tenants');
    return r.ok ? { ok: true as const, value: r.value.tenants } : r;
  }
  setCredential(tenant: string, input: unknown) {
    return this.#call<CredentialView>('PUT', `/api/credentials/${encodeURIComponent(tenant)}`, { credential: input });
  }
  removeCredential(tenant: string) {
    return this.#call<{ tenant: string; removed: boolean }>('DELETE', `/api/credentials/${encodeURIComponent(tenant)}`);
  }
  async listCredentials() {
    return this.#value(await this.#call<{ credentials: CredentialView[] }>('GET', '/api/credentials')).credentials;
  }
  async usage(query: UsageQuery) {
    const q = new URLSearchParams({ since: query.since.toISOString() });
    if (query.tenant) q.set('tenant', query.tenant);
    return this.#value(await this.#call<{ usage: UsageRow[] }>('GET', `/api/usage?${q}`)).usage;
  }
  // Long jobs on a large table: wait as long as they take (up to a day), not the usual 15 s.
  purge() {
    return this.#call<PurgeResult>('POST', '/api/purge', undefined, 86_400_000);
  }
  rotateEncryption() {
    return this.#call<RotationResult>('POST', '/api/encryption/rotate', undefined, 86_400_000);
  }
  async auditTail(options: TailOptions & { payloads?: boolean }) {
    const q = new URLSearchParams();
    if (options.payloads) q.set('payloads', 'true');
    if (options.limit) q.set('limit', String(options.limit));
    if (options.type) q.set('type', options.type);
    if (options.tenantId) q.set('tenant', options.tenantId);
    return this.#value(await this.#call<{ events: StoredAuditEvent[] }>('GET', `/api/audit/events?${q}`)).events;
  }
  async auditVerify() {
    return this.#value(await this.#call<VerifyResult>('GET', '/api/audit/verify'));
  }
  async listMcpSessions(filter: { tenant?: string | undefined; keyId?: string | undefined }) {
    const q = new URLSearchParams();
    if (filter.tenant) q.set('tenant', filter.tenant);
    if (filter.keyId) q.set('key', filter.keyId);
    return this.#value(await this.#call<{ sessions: McpSessionView[] }>('GET', `/api/mcp/sessions?${q}`)).sessions;
  }
  terminateMcpSession(ref: string) {
    return this.#call<McpSessionView>('DELETE', `/api/mcp/sessions/${encodeURIComponent(ref)}`);
  }
  async close() {}
}
