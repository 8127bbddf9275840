/**
 * Facts about the caller that middleware and audit events need. Node-specific: reads the socket
 * through @hono/node-server's bindings. `clientAddress` (security/client-ip.ts) decides the
 * client's address once, believing forwarding headers only from trusted proxies; before it
 * runs, the socket address is the only address believed.
 */
import type { Context } from 'hono';
import type { Actor } from '../auth/key-service.js';

interface NodeBindings {
  incoming?: { socket?: { remoteAddress?: string } };
}

/** The peer of the TCP connection: the client, or a proxy in front of Bulwark. */
export function socketAddress(c: Context): string | undefined {
  const address = (c.env as NodeBindings | undefined)?.incoming?.socket?.remoteAddress;
  return address?.replace(/^::ffff:/, '');
}

/** The client's address as `clientAddress` resolved it, else the socket's. */
export function clientIp(c: Context): string | undefined {
  return (c.get('clientIp') as string | undefined) ?? socketAddress(c);
}

/** What every audit event about a request records: who sent it, from where, and what it was. */
export function requestFacts(c: Context): { ip: string | undefined; userAgent: string | undefined; method: string; path: string; requestId: string | undefined } {
  return { ip: clientIp(c), userAgent: c.req.header('user-agent'), method: c.req.method, path: requestPath(c), requestId: c.get('requestId') as string | undefined };
}

export function requestPath(c: Context): string {
  return new URL(c.req.url).pathname;
}

/** The caller of a management action, as the services that audit it take it. */
export function actorOf(c: Context): Actor {
  const principal = c.get('principal') as Actor['principal'];
  return {
    principal,
    // The admin token lives in the data dir (mode 600) and only the CLI reads it.
    via: principal.keyId === 'admin-token' ? 'cli' : 'admin-api',
    ip: clientIp(c),
    userAgent: c.req.header('user-agent'),
    requestId: c.get('requestId') as string | undefined,
    method: c.req.method,
    path: requestPath(c),
  };
}
