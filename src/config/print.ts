/**
 * What `bulwark config print` shows: the effective configuration with every secret masked.
 * Secret paths come from `SECRET_PATHS`, so a secret added to the schema is masked here too.
 * Connection URLs keep scheme, user, host, port and database so operators can check where
 * Bulwark connects; only their passwords are masked. Unset secrets stay visible as null.
 */
import type { Config } from './load.js';
import { SECRET_PATHS } from './schema.js';

export const MASK = '********';

/** Secret paths shown as a URL with its password masked rather than masked whole. */
const CONNECTION_URL_PATHS = new Set(['database.url', 'redis.url']);

/** A JSON-able copy of `config` with every secret replaced by `MASK`; unset values are null. */
export function maskedConfig(config: Config): Record<string, unknown> {
  return maskNode(config, []) as Record<string, unknown>;
}

function maskNode(value: unknown, path: readonly string[]): unknown {
  if (value === undefined || value === null) return null;
  const dotted = path.join('.');
  if (CONNECTION_URL_PATHS.has(dotted)) return typeof value === 'string' ? maskConnectionUrl(value) : MASK;
  if (isSecretPath(dotted)) return Array.isArray(value) ? value.map(() => MASK) : MASK;
  if (Array.isArray(value)) return value.map((item, i) => maskNode(item, [...path, String(i)]));
  if (typeof value === 'object') {
    const copy: Record<string, unknown> = {};
    for (const [key, child] of Object.entries(value)) copy[key] = maskNode(child, [...path, key]);
    return copy;
  }
  // Any other URL (the upstream, a webhook) may carry credentials in its userinfo or query.
  if (typeof value === 'string' && /^[a-z][a-z0-9+.-]*:\/\//i.test(value)) return maskConnectionUrl(value);
  return value;
}

function isSecretPath(dotted: string): boolean {
  const segments = dotted.split('.');
  for (const secret of SECRET_PATHS) {
    const pattern = secret.split('.');
    // The secret itself or anything under it; `*` matches any one segment.
    if (segments.length >= pattern.length && pattern.every((part, i) => part === '*' || part === segments[i])) return true;
  }
  return false;
}

/**
 * The URL with its password, and any query parameter whose name suggests a credential
 * (libpq's `password` and `sslpassword`, `api_key`, `token`, …), replaced by `MASK`. A URL that does not parse is masked whole, since we
 * cannot tell where its password is.
 */
export function maskConnectionUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return MASK;
  }
  if (parsed.password) parsed.password = MASK;
  for (const name of [...new Set(parsed.searchParams.keys())]) {
    if (/password|secret|token|key|auth|signature/i.test(name)) parsed.searchParams.set(name, MASK);
  }
  return parsed.toString();
}

/** `key.path = value` lines, one per setting, for `bulwark config print` without `--json`. */
export function formatConfigText(masked: Record<string, unknown>): string {
  const lines: string[] = [];
  const walk = (value: unknown, path: string): void => {
    if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
      for (const [key, child] of Object.entries(value)) walk(child, path ? `${path}.${key}` : key);
      return;
    }
    lines.push(`${path} = ${formatValue(value)}`);
  };
  walk(masked, '');
  return `${lines.join('\n')}\n`;
}

function formatValue(value: unknown): string {
  if (value === null || value === undefined) return '(not set)';
  if (Array.isArray(value)) return `[${value.map(formatValue).join(', ')}]`;
  if (typeof value === 'string') {
    // Quote only what would be ambiguous or break the one-line-per-setting layout.
    return value === '' || /^\s|\s$|[\u0000-\u001f\u007f,[\]]/.test(value) || value === '(not set)' ? JSON.stringify(value) : value;
  }
  return String(value);
}
