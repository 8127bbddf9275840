/**
 * The arguments and result of an MCP tool call, kept in its `mcp.tool_call` audit event only
 * when body storage is on (`BULWARK_STORE_BODIES`), and then only encrypted: secrets masked
 * first, then AES-256-GCM under the key ring with the tenant and the call's own id as
 * associated data, so a payload copied into another event does not open. Operators read them
 * with `bulwark audit tail --payloads`.
 */
import type { StoredAuditEvent } from '../audit/log.js';
import { maskSecrets } from '../audit/mask.js';
import { DecryptError, type KeyRing } from '../store/crypto.js';

export interface ToolPayload {
  arguments: unknown;
  result: unknown;
}

function context(tenant: string, callId: string): string {
  return `audit:mcp.tool_call:${tenant}:${callId}`;
}

export function sealToolPayload(ring: KeyRing, tenant: string, callId: string, payload: ToolPayload): string {
  return ring.encrypt(maskSecrets(JSON.stringify(payload)), context(tenant, callId));
}

/** The events with each readable tool-call payload opened; an unreadable one says why instead. */
export function openToolPayloads(ring: KeyRing, events: readonly StoredAuditEvent[]): StoredAuditEvent[] {
  return events.map((event) => {
    const details = event.details as { callId?: unknown; payload?: unknown };
    if (event.type !== 'mcp.tool_call' || typeof details.payload !== 'string' || typeof details.callId !== 'string') return event;
    let payload: unknown;
    try {
      payload = JSON.parse(ring.decryptText(details.payload, context(event.tenantId ?? '', details.callId)));
    } catch (err) {
      payload = { unreadable: err instanceof DecryptError ? err.reason : 'malformed' };
    }
    return { ...event, details: { ...event.details, payload } };
  });
}
