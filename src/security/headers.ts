/**
 * Security response headers on every response Bulwark writes, on both of its response paths:
 * Hono-built responses, and the proxy's fast path that writes straight to Node's
 * `ServerResponse` (`writeHead`) and hands Hono the `RESPONSE_ALREADY_SENT` marker.
 *
 * On Node the headers are put on the `ServerResponse` with `setHeader` before the route runs:
 * Node merges them into a later `writeHead(status, headers)`, and the headers passed to
 * `writeHead` win, so a route can still override one (a public document's `Cache-Control`).
 * Without a Node binding (`app.request()` in tests) they are added to `c.res` afterwards,
 * each only when the route did not set it.
 *
 * Also owns the small helpers the other `security/` middleware share for those two paths.
 *
 * References: CSP Level 3 (W3C) · RFC 7034 (X-Frame-Options) · RFC 6797 (HSTS) ·
 * Referrer Policy (W3C) · Permissions Policy (W3C) · Fetch (CORP, `nosniff`) ·
 * HTML §7.1.3 (COOP) · OWASP Secure Headers Project (X-XSS-Protection: 0, no Expect-CT).
 */
import { randomBytes } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import type { Context, MiddlewareHandler } from 'hono';
import type { BulwarkEnv } from '../http/context.js';

export interface SecurityHeadersOptions {
  /**
   * Send `Strict-Transport-Security`. Off by default: only a deployment that is reached over
   * HTTPS (directly or behind a TLS-terminating proxy) may ask browsers to insist on it.
   */
  hsts?: boolean;
  /** HSTS `max-age` (RFC 6797 §6.1.1); one year by default. */
  hstsMaxAgeSeconds?: number;
}

/** For JSON, SSE and every other non-HTML response: nothing may load, frame or submit. */
export const API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/**
 * Every powerful feature a browser can grant, denied to every origin (Permissions Policy).
 * A page that needs one sets its own header.
 */
const DENIED_FEATURES = [
  'accelerometer',
  'ambient-light-sensor',
  'autoplay',
  'battery',
  'bluetooth',
  'browsing-topics',
  'camera',
  'clipboard-read',
  'clipboard-write',
  'display-capture',
  'document-domain',
  'encrypted-media',
  'fullscreen',
  'gamepad',
  'geolocation',
  'gyroscope',
  'hid',
  'identity-credentials-get',
  'idle-detection',
  'interest-cohort',
  'local-fonts',
  'magnetometer',
  'microphone',
  'midi',
  'otp-credentials',
  'payment',
  'picture-in-picture',
  'publickey-credentials-create',
  'publickey-credentials-get',
  'screen-wake-lock',
  'serial',
  'speaker-selection',
  'storage-access',
  'usb',
  'web-share',
  'window-management',
  'xr-spatial-tracking',
] as const;

export const PERMISSIONS_POLICY = DENIED_FEATURES.map((feature) => `${feature}=()`).join(', ');

const BASE_HEADERS: ReadonlyArray<readonly [string, string]> = [
  ['Content-Security-Policy', API_CSP],
  ['X-Content-Type-Options', 'nosniff'],
  // Superseded by CSP frame-ancestors, still honoured by browsers that predate it (RFC 7034).
  ['X-Frame-Options', 'DENY'],
  ['Referrer-Policy', 'no-referrer'],
  ['Permissions-Policy', PERMISSIONS_POLICY],
  ['Cross-Origin-Opener-Policy', 'same-origin'],
  ['Cross-Origin-Resource-Policy', 'same-origin'],
  // The legacy XSS auditor is itself an XSS vector; "0" turns it off (OWASP).
  ['X-XSS-Protection', '0'],
  // API answers carry keys, usage and audit data: no cache may keep them unless a route says so.
  ['Cache-Control', 'no-store'],
];

export function securityHeaders(options: SecurityHeadersOptions = {}): MiddlewareHandler<BulwarkEnv> {
  const { hsts = false, hstsMaxAgeSeconds = 31_536_000 } = options;
  if (typeof hsts !== 'boolean') throw new Error('securityHeaders: hsts must be a boolean');
  if (!Number.isSafeInteger(hstsMaxAgeSeconds) || hstsMaxAgeSeconds < 0) {
    throw new Error(`securityHeaders: hstsMaxAgeSeconds must be a non-negative integer, got ${String(hstsMaxAgeSeconds)}`);
  }
  // Computed once: the hot path only copies this list.
  const headers: ReadonlyArray<readonly [string, string]> = hsts
    ? [...BASE_HEADERS, ['Strict-Transport-Security', `max-age=${hstsMaxAgeSeconds}; includeSubDomains`]]
    : BASE_HEADERS;

  return async function securityHeadersMiddleware(c, next) {
    const outgoing = nodeResponse(c);
    if (outgoing) {
      if (!outgoing.headersSent) for (const [name, value] of headers) outgoing.setHeader(name, value);
      await next();
      return;
    }
    await next();
    if (sentDirectly(c.res)) return;
    editResponseHeaders(c, (target) => {
      for (const [name, value] of headers) if (!target.has(name)) target.set(name, value);
    });
  };
}

/**
 * For a server-rendered HTML page: a fresh nonce (128 random bits, base64) and a strict CSP
 * that lets only elements carrying it run scripts or apply styles (CSP3 §6.7.2.3). Call it
 * in the route before building the response; the header it sets wins over the API policy.
 */
export function htmlNonce(c: Context): string {
  const nonce = randomBytes(16).toString('base64');
  c.header(
    'Content-Security-Policy',
    `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'nonce-${nonce}'; img-src 'self' data:; ` +
      `connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'`,
  );
  return nonce;
}

// ——— Shared by the security middleware: the two response paths ———

/** The Node `ServerResponse` under @hono/node-server; undefined in-process (`app.request`). */
export function nodeResponse(c: Context): ServerResponse | undefined {
  return (c.env as { outgoing?: ServerResponse } | undefined)?.outgoing;
}

/** @hono/node-server's marker (and Hono's copies of it) for a response already written to the socket. */
export function sentDirectly(res: Response): boolean {
  return res.headers.has('x-hono-already-sent');
}

/**
 * Edits `c.res`'s headers. A Response from `fetch()` has immutable headers; it is copied once
 * into one that can be edited.
 */
export function editResponseHeaders(c: Context, edit: (headers: Headers) => void): void {
  try {
    edit(c.res.headers);
  } catch (err) {
    if (!(err instanceof TypeError)) throw err;
    c.res = new Response(c.res.body, c.res);
    edit(c.res.headers);
  }
}

/** Adds a field name to a `Vary` value unless it is there already or the value is `*` (RFC 9110 §12.5.5). */
export function withVary(current: string | null | undefined, field: string): string {
  if (!current) return field;
  const names = current.split(',').map((name) => name.trim().toLowerCase());
  if (names.includes('*') || names.includes(field.toLowerCase())) return current;
  return `${current}, ${field}`;
}

/** The same on a Node `ServerResponse` whose headers are still unsent. */
export function appendNodeVary(outgoing: ServerResponse, field: string): void {
  const current = outgoing.getHeader('vary');
  outgoing.setHeader('Vary', withVary(Array.isArray(current) ? current.join(', ') : current === undefined ? undefined : String(current), field));
}
