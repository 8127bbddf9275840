/**
 * Facts about the caller that middleware and audit events need. Node-specific: reads the socket
 * through @hono/node-server's bindings. `clientAddress` (security/client-ip.ts) decides the
 * client's address once, believing forwarding headers only from trusted proxies; before it
 * runs, the socket address is the only address believed.
 */
import type { Context } from 'hono';
import type { Actor } from '../auth/key-service.js';

interface NodeBindings {
  incoming?: { socket?: { remoteAddress?: string }; rawHeaders?: string[] };
}

/** The peer of the TCP connection: the client, or a proxy in front of Bulwark. */
export function socketAddress(c: Context): string | undefined {
  const address = (c.env as NodeBindings | undefined)?.incoming?.socket?.remoteAddress;
  return address?.replace(/^::ffff:/, '');
}

/**
 * A request header as web `Headers.get` gives it (a repeated header's values joined with ", ",
 * Cookie's with "; "), read from the socket's raw header list on Node, so the layers every
 * request passes build no web Headers for their few lookups. `name` is lower-case. Node's parsed
 * `incoming.headers` would not do: it keeps only the first of a repeated Host or Authorization,
 * where a check must see every value. In-process (`app.request`) it is Hono's `c.req.header`.
 */
export function requestHeader(c: Context, name: string): string | undefined {
  const raw = (c.env as NodeBindings | undefined)?.incoming?.rawHeaders;
  if (!raw) return c.req.header(name);
  const separator = name === 'cookie' ? '; ' : ', ';
  let value: string | undefined;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const field = raw[i] as string;
    if (field.length === name.length && field.toLowerCase() === name) value = value === undefined ? raw[i + 1] : `${value}${separator}${raw[i + 1]}`;
  }
  return value;
}

/** The client's address as `clientAddress` resolved it, else the socket's. */
export function clientIp(c: Context): string | undefined {
  return (c.get('clientIp') as string | undefined) ?? socketAddress(c);
}

/** What every audit event about a request records: who sent it, from where, and what it was. */
export function requestFacts(c: Context): { ip: string | undefined; userAgent: string | undefined; method: string; path: string; requestId: string | undefined } {
  return { ip: clientIp(c), userAgent: requestHeader(c, 'user-agent'), method: c.req.method, path: requestPath(c), requestId: c.get('requestId') as string | undefined };
}

export interface RequestTarget {
  /** The path as WHATWG URL parsing normalises it (dot segments resolved, percent-encoded). */
  path: string;
  /** The query string with its `?`, or empty. */
  search: string;
}

const targets = new WeakMap<Request, RequestTarget>();

/** The request's path and query, parsed once per request (the access log and the proxy both need them). */
export function requestTarget(c: Context): RequestTarget {
  let target = targets.get(c.req.raw);
  if (!target) {
    const url = new URL(c.req.url);
    target = { path: url.pathname, search: url.search };
    targets.set(c.req.raw, target);
  }
  return target;
}

export function requestPath(c: Context): string {
  return requestTarget(c).path;
}

/** The caller of a management action, as the services that audit it take it. */
export function actorOf(c: Context): Actor {
  const principal = c.get('principal') as Actor['principal'];
  return {
    principal,
    // The admin token lives in the data dir (mode 600) and only the CLI reads it.
    via: principal.keyId === 'admin-token' ? 'cli' : 'admin-api',
    ip: clientIp(c),
    userAgent: requestHeader(c, 'user-agent'),
    requestId: c.get('requestId') as string | undefined,
    method: c.req.method,
    path: requestPath(c),
  };
}
