/**
 * The admin API on the admin listener: key, tenant and audit management for operators and
 * admin-scoped keys. The CLI calls it while a server holds the embedded database; it runs the
 * same `KeyService` the CLI runs directly otherwise.
 */
import { Hono } from 'hono';
import { z } from 'zod';
import type { AuditEventInput, AuditReader, StoredAuditEvent } from '../../audit/log.js';
import { type FailureCode, type KeyService, type Result, operatorOnly } from '../../auth/key-service.js';
import { crossesTenants } from '../../auth/principal.js';
import { LimitSetSchema, SCOPE_PATTERN } from '../../config/schema.js';
import type { ProxyManagement } from '../../proxy/management.js';
import type { McpGateway } from '../../mcp/gateway.js';
import { SESSION_REF } from '../../mcp/sessions.js';
import { openToolPayloads } from '../../mcp/payloads.js';
import type { KeyRing } from '../../store/crypto.js';
import { actorOf } from '../client-info.js';
import type { BulwarkEnv } from '../context.js';
import { ApiError, type ErrorCode } from '../errors.js';
import { readJson, readQuery } from '../validate.js';
import type { Context } from 'hono';

const FAILURE_CODE: Record<FailureCode, ErrorCode> = {
  not_found: 'not_found',
  validation_failed: 'validation_failed',
  conflict: 'conflict',
  forbidden: 'forbidden',
};

function unwrap<T>(result: Result<T>): T {
  if (!result.ok) throw new ApiError(FAILURE_CODE[result.code], result.message);
  return result.value;
}

const KeyId = z.string().regex(/^[0-9A-Za-z]{1,64}$/, 'is not a key id');
const CreateKeyBody = z.strictObject({
  name: z.string().min(1).max(100),
  scopes: z.array(z.string().regex(SCOPE_PATTERN, 'is not a valid scope')).min(1),
  tenant: z.string().optional(),
  expiresIn: z.string().optional(),
  limits: LimitSetSchema.optional(),
  allowedIps: z.array(z.string().min(1).max(64)).max(100).optional(),
});
const RenameBody = z.strictObject({ name: z.string().min(1).max(100) });
const RotateBody = z.strictObject({ grace: z.string().optional() });
const TenantBody = z.strictObject({ id: z.string().min(1).max(63), name: z.string().min(1).max(100).optional() });
const ListKeysQuery = z.strictObject({ tenant: z.string().optional(), all: z.enum(['true', 'false']).optional() });
const TenantParam = z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'is not a tenant id');
const CredentialBody = z.strictObject({ credential: z.union([z.string().min(1), z.record(z.string(), z.unknown())]) });
const UsageQuery = z.strictObject({ tenant: z.string().optional(), since: z.iso.datetime({ offset: true }).optional() });
const TailQuery = z.strictObject({
  limit: z.coerce.number().int().min(1).max(1000).optional(),
  type: z.string().max(100).optional(),
  tenant: z.string().optional(),
  /** Open the encrypted tool-call payloads (operators only). */
  payloads: z.enum(['true', 'false']).optional(),
});

const McpSessionsQuery = z.strictObject({ tenant: TenantParam.optional(), key: KeyId.optional() });
const McpRef = z.string().regex(SESSION_REF, 'is not a session ref (16 hex characters)');

export interface AdminApiOptions {
  mcp: McpGateway;
  keyRing: KeyRing;
  keyService: KeyService;
  proxyManagement: ProxyManagement;
  auditReader: AuditReader;
  audit: (event: AuditEventInput) => void;
}

export function adminApiRoutes(options: AdminApiOptions): Hono<BulwarkEnv> {
  const { keyService, proxyManagement, auditReader, audit, mcp, keyRing } = options;
  const keyId = (c: Context<BulwarkEnv>) => {
    const parsed = KeyId.safeParse(c.req.param('id'));
    if (!parsed.success) throw new ApiError('validation_failed', 'id: is not a key id');
    return parsed.data;
  };
  const tenantParam = (c: Context<BulwarkEnv>) => {
    const parsed = TenantParam.safeParse(c.req.param('tenant'));
    if (!parsed.success) throw new ApiError('validation_failed', 'tenant: is not a tenant id');
    return parsed.data;
  };
  const auditTenant = (c: Context<BulwarkEnv>, requested: string | undefined) =>
    crossesTenants(c.get('principal')) ? requested : c.get('principal').tenant;

  return new Hono<BulwarkEnv>()
    .get('/api/keys', async (c) => {
      const q = readQuery(c, ListKeysQuery);
      return c.json({ keys: unwrap(await keyService.listKeys(actorOf(c), { tenant: q.tenant, includeRevoked: q.all === 'true' })) });
    })
    .post('/api/keys', async (c) => {
      const body = await readJson(c, CreateKeyBody);
      return c.json(unwrap(await keyService.createKey(actorOf(c), body)), 201);
    })
    .get('/api/keys/:id', async (c) => c.json(unwrap(await keyService.getKey(actorOf(c), keyId(c)))))
    .patch('/api/keys/:id', async (c) => {
      const body = await readJson(c, RenameBody);
      return c.json(unwrap(await keyService.renameKey(actorOf(c), keyId(c), body.name)));
    })
    .post('/api/keys/:id/revoke', async (c) => c.json(unwrap(await keyService.revokeKey(actorOf(c), keyId(c)))))
    .post('/api/keys/:id/rotate', async (c) => {
      const body = c.req.header('content-type') ? await readJson(c, RotateBody) : {};
      return c.json(unwrap(await keyService.rotateKey(actorOf(c), keyId(c), body)), 201);
    })
    .get('/api/tenants', async (c) => c.json({ tenants: unwrap(await keyService.listTenants(actorOf(c))) }))
    .post('/api/tenants', async (c) => {
      const body = await readJson(c, TenantBody);
      return c.json(unwrap(await keyService.createTenant(actorOf(c), body.id, body.name)), 201);
    })
    .get('/api/credentials', async (c) => c.json({ credentials: await proxyManagement.listCredentials(actorOf(c)) }))
    .put('/api/credentials/:tenant', async (c) => {
      const tenant = tenantParam(c);
      const body = await readJson(c, CredentialBody);
      return c.json(unwrap(await proxyManagement.setCredential(actorOf(c), tenant, body.credential)));
    })
    .delete('/api/credentials/:tenant', async (c) => c.json(unwrap(await proxyManagement.removeCredential(actorOf(c), tenantParam(c)))))
    .get('/api/usage', async (c) => {
      const q = readQuery(c, UsageQuery);
      const since = q.since ? new Date(q.since) : new Date(Date.now() - 86_400_000);
      return c.json({ since: since.toISOString(), usage: await proxyManagement.usage(actorOf(c), { tenant: q.tenant, since }) });
    })
    .post('/api/purge', async (c) => c.json(unwrap(await proxyManagement.purgeNow(actorOf(c)))))
    .post('/api/encryption/rotate', async (c) => c.json(unwrap(await proxyManagement.rotateEncryption(actorOf(c)))))
    .get('/api/audit/events', async (c) => {
      const q = readQuery(c, TailQuery);
      if (q.payloads === 'true') {
        const refused = operatorOnly(actorOf(c), audit, 'audit.payloads', 'Only an operator can read tool-call payloads.');
        if (refused) unwrap(refused);
      }
      const events: StoredAuditEvent[] = await auditReader.tail({ limit: q.limit, type: q.type, tenantId: auditTenant(c, q.tenant) });
      return c.json({ events: q.payloads === 'true' ? openToolPayloads(keyRing, events) : events });
    })
    .get('/api/audit/verify', async (c) => {
      const refused = operatorOnly(actorOf(c), audit, 'audit.verify', 'Only an operator can verify the whole audit chain.');
      if (refused) unwrap(refused);
      return c.json(await auditReader.verify());
    })
    .get('/api/mcp/sessions', async (c) => {
      const q = readQuery(c, McpSessionsQuery);
      return c.json({ sessions: await mcp.listSessions(actorOf(c), { tenant: q.tenant, keyId: q.key }) });
    })
    .delete('/api/mcp/sessions/:ref', async (c) => {
      const parsed = McpRef.safeParse(c.req.param('ref'));
      if (!parsed.success) throw new ApiError('validation_failed', 'ref: is not a session ref (16 hex characters)');
      return c.json(unwrap(await mcp.terminateSession(actorOf(c), parsed.data)));
    });
}
