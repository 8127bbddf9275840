/**
 * Secret masking for everything Bulwark writes down: log lines, audit events, error text.
 *
 * `maskSecrets` rewrites free text (headers, URLs, JSON, error messages) so that credentials
 * are replaced by `****` while the surrounding text stays readable; `maskDeep` applies it to a
 * copy of a structured value and also hides values whose *key* names a secret; `maskHeaders`
 * hides credential-carrying headers entirely.
 *
 * The rules err on the side of masking: a false positive costs a less readable log line, a
 * false negative leaks a credential (STYLE.md §14). Every replacement is idempotent, so masking
 * twice (object formatter, then the final log-line pass) changes nothing further, and no
 * replacement adds or removes a quote or backslash, so masked JSON text stays valid JSON.
 */

const MASK = '****';

/** Headers whose whole value is a credential; they are replaced, never partially shown. */
export const SENSITIVE_HEADER_NAMES: readonly string[] = Object.freeze([
  'authorization',
  'x-api-key',
  'cookie',
  'set-cookie',
  'proxy-authorization',
]);

const SENSITIVE_HEADER_SET = new Set<string>(SENSITIVE_HEADER_NAMES);

/**
 * Names that carry secrets, matched as a suffix so `client_secret`, `x-api-key`, `accessToken`
 * and `DATABASE_PASSWORD` are all covered. `max_tokens`, `token_type` or `apiKeyId` are not
 * (the name must *end* in the secret word).
 */
const SECRET_NAME_SUFFIX = String.raw`(?:token|secret|passw(?:or)?d|api[_-]?key|authorization|private[_-]?key|cookie)`;
const SENSITIVE_KEY = new RegExp(`${SECRET_NAME_SUFFIX}$`, 'i');

/** Cheap pre-check: a string with none of these substrings cannot match any pattern below. */
const TRIGGER = /sk-ant-|bwk_|bearer|basic|eyJ|token|secret|passw|api[_-]?key|authoriz|private|cookie|:\/\//i;

/** The body may not contain `-----` or a quote, so a missing END marker costs one short scan. */
const PEM_PRIVATE_KEY =
  /-----BEGIN ([A-Z0-9 ]{0,32})PRIVATE KEY-----(?:(?!-----)[^"'`])*-----END \1PRIVATE KEY-----/g;

/** Anthropic API keys and OAuth tokens: sk-ant-api03-…, sk-ant-oat01-…, sk-ant-ort01-… */
const ANTHROPIC_KEY = /sk-ant-[A-Za-z0-9_-]+/g;

/** Any run that starts like a Bulwark key; the callback decides how much of it may be shown. */
const BULWARK_KEY_RUN = /bwk_(live|test)_([A-Za-z0-9_]*)/g;
const BULWARK_KEY_BODY = /^([0-9A-Za-z]{16})_[0-9A-Za-z]{43}$/;
const BULWARK_MASKED_BODY = /^[0-9A-Za-z]{16}_$/;

/**
 * Compact JWS: header.payload.signature, the header always starting `{"` → `eyJ`. It must start
 * a token, which also keeps a long run of `eyJeyJ…` linear.
 */
const JWT = /(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*/g;

/**
 * `Bearer <token68>` / `Basic <token68>` (RFC 7235 §2.1), also URL-encoded (`%20`, `+`).
 * Not masked: a credential that is already masked (the run is followed by `*`), a challenge's
 * auth-params (RFC 6750 §3, RFC 9728 §5.1: `Bearer realm="…", resource_metadata="…"`), and a
 * short plain word (see `isProseWord`) so "Bearer of good news" or "Basic auth" stay readable.
 */
const AUTH_SCHEME_CREDENTIAL =
  /\b(Bearer|Basic)([ \t]+|%20|\+)(?!(?:realm|scope|error|error_description|error_uri|resource_metadata|charset)=)([A-Za-z0-9._~+/-]+=*)/gi;
const PROSE_WORD = /^[A-Za-z]{1,7}$/;

/**
 * `scheme://user:password@host`. RFC 3986 §3.2.1 forbids raw `/ ? # @`-delimiting characters,
 * quotes and backslashes in userinfo; the password run is greedy so a raw `@` inside it is
 * still hidden up to the last `@` before the host.
 */
const URL_CREDENTIALS = /\b([A-Za-z][A-Za-z0-9+.-]{0,31}:\/\/)([^\s:@/?#"'\\<>]*):([^\s/?#"'\\<>]*)@/g;

/** `Cookie: a=1; b=2` header lines: the whole rest of the line is credentials. */
const COOKIE_LINE = /(?<![A-Za-z0-9_-])((?:set-)?cookie[ \t]*:[ \t]*)(?!\*{4})([^\r\n"'\\]+)/gi;

/**
 * `name=value`, `name: value`, `"name": "value"`, `'name': 'value'` and the escaped
 * `\"name\":\"value\"` of JSON inside JSON. Groups: 1 name, 2 closing key quote, 3 separator,
 * 4 value quote, 5 quoted value, 6 bare value (optionally with its auth scheme).
 */
const KEY_VALUE = new RegExp(
  String.raw`(?<![A-Za-z0-9_-])([A-Za-z0-9_-]*?${SECRET_NAME_SUFFIX})(\\?["'])?([ \t]*[:=][ \t]*)` +
    String.raw`(?:(\\?["'])((?:(?!\4)[^\\\r\n]|\\.)*?)\4` +
    String.raw`|((?:(?:Bearer|Basic|Token|Digest)(?:[ \t]+|%20|\+))?[^\s"'\\&,;{}\[\]]+))`,
  'gi',
);

/**
 * Values the key/value rule leaves alone: already masked (possibly followed by the closing
 * punctuation of prose, as in `(x-api-key: sk-ant-****)`), or not a secret at all.
 */
const ALREADY_MASKED =
  /^(?:(?:Bearer|Basic|Token|Digest)(?:[ \t]+|%20|\+))?(?:\*{4}|sk-ant-\*{4}|bwk_\*{4}|bwk_(?:live|test)_[0-9A-Za-z]{16}_\*{4}|eyJ\*{4})[)>.!?]*$/i;
const NON_SECRET_LITERAL = /^(?:null|true|false|undefined)$/i;

/** False when `text` has none of the substrings any masking rule needs: it is safe as it is. */
export function mayContainSecret(text: string): boolean {
  return TRIGGER.test(text);
}

/** Mask every credential pattern in free text. Text without a trigger substring is returned as is. */
export function maskSecrets(text: string): string {
  if (!TRIGGER.test(text)) return text;
  return text
    .replace(PEM_PRIVATE_KEY, `-----BEGIN $1PRIVATE KEY-----${MASK}-----END $1PRIVATE KEY-----`)
    .replace(ANTHROPIC_KEY, `sk-ant-${MASK}`)
    .replace(BULWARK_KEY_RUN, maskBulwarkKey)
    .replace(JWT, `eyJ${MASK}`)
    .replace(AUTH_SCHEME_CREDENTIAL, maskAuthSchemeCredential)
    .replace(URL_CREDENTIALS, maskUrlCredentials)
    .replace(COOKIE_LINE, `$1${MASK}`)
    .replace(KEY_VALUE, maskKeyValue);
}

function maskBulwarkKey(run: string, mode: string, body: string, offset: number, text: string): string {
  const exact = BULWARK_KEY_BODY.exec(body);
  // The key id is public (it names the key in the dashboard and audit log); the secret is not.
  if (exact) return `bwk_${mode}_${exact[1]}_${MASK}`;
  if (BULWARK_MASKED_BODY.test(body) && text.startsWith(MASK, offset + run.length)) return run;
  return `bwk_${MASK}`;
}

function maskAuthSchemeCredential(
  match: string,
  scheme: string,
  separator: string,
  token: string,
  offset: number,
  text: string,
): string {
  const alreadyMasked = text.charAt(offset + match.length) === '*';
  return alreadyMasked || PROSE_WORD.test(token) ? match : `${scheme}${separator}${MASK}`;
}

function maskUrlCredentials(match: string, scheme: string, user: string, password: string): string {
  return password === '' || password === MASK ? match : `${scheme}${user}:${MASK}@`;
}

function maskKeyValue(
  match: string,
  name: string,
  keyQuote: string | undefined,
  separator: string,
  valueQuote: string | undefined,
  quotedValue: string | undefined,
  bareValue: string | undefined,
): string {
  const value = quotedValue ?? bareValue ?? '';
  if (value === '' || ALREADY_MASKED.test(value)) return match;
  const closing = keyQuote ?? '';
  if (valueQuote !== undefined) return `${name}${closing}${separator}${valueQuote}${MASK}${valueQuote}`;
  if (NON_SECRET_LITERAL.test(value)) return match;
  // A quoted key with a bare value is JSON (`"token": 5`): quote the mask so the text stays valid.
  return `${name}${closing}${separator}${closing}${MASK}${closing}`;
}

/** True when a property or header name says its value is a credential. */
function isSensitiveKey(key: string): boolean {
  return SENSITIVE_HEADER_SET.has(key.toLowerCase()) || SENSITIVE_KEY.test(key);
}

/** Replace credential headers entirely and mask the rest as free text. Returns a new object. */
export function maskHeaders(headers: Readonly<Record<string, string>>): Record<string, string>;
export function maskHeaders(
  headers: Readonly<Record<string, string | string[] | undefined>>,
): Record<string, string | string[]>;
export function maskHeaders(
  headers: Readonly<Record<string, string | string[] | undefined>>,
): Record<string, string | string[]> {
  const masked: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    const sensitive = isSensitiveKey(name);
    const maskOne = (item: string): string => (sensitive ? MASK : maskSecrets(item));
    masked[name] = Array.isArray(value) ? value.map(maskOne) : maskOne(value);
  }
  return masked;
}

/** Objects nested deeper than this are replaced by a marker: log lines stay bounded. */
const MAX_DEPTH = 8;
const TRUNCATED = '[Truncated]';
const CIRCULAR = '[Circular]';

/**
 * A masked deep copy: strings through `maskSecrets`, values under a secret-named key replaced
 * by `****`, Errors turned into `{ type, message, stack }`, cycles and excess depth replaced by
 * markers. Values with `toJSON` (Date, URL, Buffer) are masked in their JSON form, as they
 * would be logged.
 */
export function maskDeep<T>(value: T): T {
  return maskValue(value, 0, new WeakSet(), false) as T;
}

function maskValue(value: unknown, depth: number, ancestors: WeakSet<object>, sensitive: boolean): unknown {
  switch (typeof value) {
    case 'string':
      return sensitive && value !== '' ? MASK : maskSecrets(value);
    case 'number':
    case 'bigint':
      return sensitive ? MASK : value;
    case 'object':
      break;
    default:
      return value;
  }
  if (value === null) return null;
  if (ancestors.has(value)) return CIRCULAR;
  if (depth >= MAX_DEPTH) return TRUNCATED;

  ancestors.add(value);
  try {
    return maskObject(value, depth, ancestors, sensitive);
  } finally {
    ancestors.delete(value);
  }
}

function maskObject(value: object, depth: number, ancestors: WeakSet<object>, sensitive: boolean): unknown {
  const next = depth + 1;
  if (value instanceof Error) return maskError(value, next, ancestors);
  if (Array.isArray(value)) return value.map((item) => maskValue(item, next, ancestors, sensitive));
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return '[Binary]';
  if (value instanceof Headers) return maskEntries(value.entries(), next, ancestors, sensitive);
  if (value instanceof Map) return maskEntries(value.entries(), next, ancestors, sensitive);
  if (value instanceof Set) return [...value].map((item) => maskValue(item, next, ancestors, sensitive));

  const toJSON = (value as { toJSON?: unknown }).toJSON;
  if (typeof toJSON === 'function') {
    let json: unknown;
    try {
      json = toJSON.call(value);
    } catch {
      return '[Unserializable]';
    }
    if (json !== value) return maskValue(json, depth, ancestors, sensitive);
  }
  return maskEntries(Object.entries(value), next, ancestors, sensitive);
}

function maskEntries(
  entries: Iterable<[unknown, unknown]>,
  depth: number,
  ancestors: WeakSet<object>,
  sensitive: boolean,
): Record<string, unknown> {
  const masked: Record<string, unknown> = {};
  for (const [rawKey, item] of entries) {
    const key = String(rawKey);
    masked[key] = maskValue(item, depth, ancestors, sensitive || isSensitiveKey(key));
  }
  return masked;
}

function maskError(error: Error, depth: number, ancestors: WeakSet<object>): Record<string, unknown> {
  const constructorName = typeof error.constructor === 'function' ? error.constructor.name : '';
  const masked: Record<string, unknown> = {
    type: constructorName || error.name,
    message: maskSecrets(String(error.message)),
  };
  if (typeof error.stack === 'string') masked.stack = maskSecrets(error.stack);

  // Own enumerable fields such as `code` or `status` are kept, masked like any other value.
  for (const [key, item] of Object.entries(error)) {
    if (key in masked) continue;
    masked[key] = maskValue(item, depth, ancestors, isSensitiveKey(key));
  }
  if (error.cause !== undefined) masked.cause = maskValue(error.cause, depth, ancestors, false);
  if (error instanceof AggregateError) {
    masked.errors = maskValue(error.errors, depth, ancestors, false);
  }
  return masked;
}
