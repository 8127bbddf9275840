/**
 * `bulwark doctor`: what is wrong with an install, as findings (ok / warn / fail). Two halves:
 * `localFindings` reads the config and the data dir's file modes without starting anything, and
 * `probeDeployment` asks a running deployment, from outside and without any credential, whether
 * it answers what it must refuse. No finding ever carries a secret value or a database URL.
 */
import { statSync } from 'node:fs';
import path from 'node:path';
import type { Config } from '../config/load.js';
import { databaseTlsProblem, encryptionKeyProblems, isLoopbackHost, safetyProblems, secretWeakness } from '../config/safety.js';

export interface Finding {
  level: 'ok' | 'warn' | 'fail';
  check: string;
  message: string;
}

export interface LocalFindingsOptions {
  /** Replaces `fs.statSync(p).mode`; undefined means the path does not exist. */
  statMode?: (p: string) => number | undefined;
}

/** Checks a local install (config, secrets, file modes) without starting anything. */
export function localFindings(config: Config, options: LocalFindingsOptions = {}): Finding[] {
  const statMode = options.statMode ?? defaultStatMode;
  const findings: Finding[] = [
    ...permissionFindings(config, statMode),
    ...secretFindings(config),
    ...databaseFindings(config),
    ...listenerFindings(config),
  ];
  // safetyProblems is what start-up refuses; our own checks reuse its exact lines where they
  // overlap, so any line not already reported is one we do not check ourselves (e.g. a
  // malformed DATABASE_URL, or auth off beside a non-loopback listener).
  const reported = findings.map((f) => f.message);
  for (const problem of safetyProblems(config, { statMode })) {
    if (!reported.some((message) => message.includes(problem))) {
      findings.push({ level: 'fail', check: 'config.safety', message: problem });
    }
  }
  return findings;
}

type StatMode = (p: string) => number | undefined;

function permissionFindings(config: Config, statMode: StatMode): Finding[] {
  const findings: Finding[] = [];
  const dataDirMode = statMode(config.dataDir);
  if (dataDirMode === undefined) {
    findings.push({ level: 'ok', check: 'files.dataDir', message: `${config.dataDir} does not exist yet; it is created with mode 700 on first start` });
  } else {
    findings.push(privateModeFinding('files.dataDir', 'data dir', config.dataDir, dataDirMode, 0o700));
    for (const [check, name, mode] of [
      ['files.adminToken', 'admin.token', 0o600],
      ['files.serverJson', 'server.json', 0o600],
      ['files.db', 'db', 0o700],
    ] as const) {
      const file = path.join(config.dataDir, name);
      const actual = statMode(file);
      if (actual !== undefined) findings.push(privateModeFinding(check, name === 'db' ? 'embedded database dir' : name, file, actual, mode));
    }
  }

  const credentialsMode = statMode(config.credentialsDir);
  if (credentialsMode !== undefined) {
    // Same text as safetyProblems' production refusal, so the two are reported once.
    findings.push(
      (credentialsMode & 0o077) !== 0
        ? {
            level: 'fail',
            check: 'files.credentialsDir',
            message: `BULWARK_CREDENTIALS_DIR: ${config.credentialsDir} is accessible by group or other (mode ${octal(credentialsMode)}); run chmod 700 on it`,
          }
        : { level: 'ok', check: 'files.credentialsDir', message: `credentials dir ${config.credentialsDir} is private (mode ${octal(credentialsMode)})` },
    );
  }

  if (config.configFile) {
    const mode = statMode(config.configFile);
    if (mode !== undefined) {
      // A warning, not a failure: many config files hold no secret, but one that does is then readable.
      findings.push(
        (mode & 0o066) !== 0
          ? {
              level: 'warn',
              check: 'files.configFile',
              message: `config file ${config.configFile} is readable or writable by group or other (mode ${octal(mode)}); run chmod 600 on it if it holds secrets`,
            }
          : { level: 'ok', check: 'files.configFile', message: `config file ${config.configFile} is private (mode ${octal(mode)})` },
      );
    }
  }
  return findings;
}

function privateModeFinding(check: string, what: string, file: string, mode: number, expected: number): Finding {
  if ((mode & 0o077) !== 0) {
    return { level: 'fail', check, message: `${what} ${file} is accessible by group or other (mode ${octal(mode)}); run chmod ${octal(expected)} on it` };
  }
  return { level: 'ok', check, message: `${what} ${file} is private (mode ${octal(mode)})` };
}

function secretFindings(config: Config): Finding[] {
  const findings: Finding[] = [];
  const production = config.mode === 'production';
  const secrets: [check: string, envName: string, value: string | undefined][] = [
    ['secrets.jwtSecret', 'BULWARK_JWT_SECRET', config.secrets.jwtSecret],
    ['bootstrapKey.key', 'BULWARK_API_KEY', config.bootstrapKey.key],
    ['secrets.adminKey', 'BULWARK_ADMIN_KEY', config.secrets.adminKey],
    ['secrets.keyHashSecret', 'BULWARK_KEY_HASH_SECRET', config.secrets.keyHashSecret],
  ];
  for (const [check, envName, value] of secrets) {
    if (value === undefined) continue;
    // secretWeakness never includes the secret; the message names only the setting.
    const weakness = secretWeakness(value);
    if (!weakness) findings.push({ level: 'ok', check, message: `${envName} is set and strong` });
    else if (production) findings.push({ level: 'fail', check, message: `${envName}: ${weakness}` });
    else findings.push({ level: 'warn', check, message: `${envName}: ${weakness} (production refuses to start with it)` });
  }

  const keyProblems = encryptionKeyProblems(config.secrets.encryptionKeys);
  for (const problem of keyProblems) findings.push({ level: 'fail', check: 'secrets.encryptionKeys', message: problem });
  if (config.secrets.encryptionKeys.length === 0) {
    findings.push(
      production
        ? {
            level: 'fail',
            check: 'secrets.encryptionKeys',
            message: 'BULWARK_ENCRYPTION_KEYS: production needs at least one encryption key (make one with: openssl rand -base64 32)',
          }
        : { level: 'warn', check: 'secrets.encryptionKeys', message: 'BULWARK_ENCRYPTION_KEYS: none set (production refuses to start without one)' },
    );
  } else if (keyProblems.length === 0) {
    const count = config.secrets.encryptionKeys.length;
    findings.push({ level: 'ok', check: 'secrets.encryptionKeys', message: `${count} encryption key${count === 1 ? '' : 's'} of 32 bytes` });
  }
  return findings;
}

function databaseFindings(config: Config): Finding[] {
  const url = config.database.url;
  if (!url) return [{ level: 'ok', check: 'database.tls', message: `embedded database (PGlite) in ${path.join(config.dataDir, 'db')}; no network involved` }];
  if (!/^postgres(ql)?:\/\//.test(url)) return []; // safetyProblems names the malformed URL.
  const problem = databaseTlsProblem(url);
  if (problem) {
    // The URL is never shown: it usually carries the password.
    const refusal = `DATABASE_URL: ${problem}`;
    return [
      config.mode === 'production'
        ? { level: 'fail', check: 'database.tls', message: refusal }
        : { level: 'warn', check: 'database.tls', message: `${refusal} (production refuses to start without it)` },
    ];
  }
  return [{ level: 'ok', check: 'database.tls', message: 'PostgreSQL is on this machine or reached with TLS required' }];
}

function listenerFindings(config: Config): Finding[] {
  const findings: Finding[] = [];
  const { server, admin } = config;
  if (config.mode === 'development' && !isLoopbackHost(server.host)) {
    findings.push({
      level: 'warn',
      check: 'listen.public',
      message: `BULWARK_HOST is ${server.host} in development: the gateway on port ${server.port} is reachable from other machines`,
    });
  } else {
    findings.push({ level: 'ok', check: 'listen.public', message: `public listener on ${server.host}:${server.port}` });
  }

  if (!isLoopbackHost(admin.host)) {
    findings.push({
      level: 'warn',
      check: 'listen.admin',
      message: `BULWARK_ADMIN_HOST is ${admin.host}: the admin listener on port ${admin.port} is reachable from other machines; firewall it to operators only`,
    });
  } else {
    findings.push({ level: 'ok', check: 'listen.admin', message: `admin listener on loopback (${admin.host}:${admin.port})` });
  }

  if (!config.auth.enabled) {
    findings.push(
      config.mode === 'production'
        ? { level: 'fail', check: 'auth', message: 'BULWARK_AUTH: authentication cannot be turned off in production' }
        : { level: 'warn', check: 'auth', message: 'BULWARK_AUTH is off: anyone who reaches the public listener is served' },
    );
  } else {
    findings.push({ level: 'ok', check: 'auth', message: 'callers must authenticate' });
  }
  return findings;
}

function octal(mode: number): string {
  return (mode & 0o777).toString(8);
}

function defaultStatMode(p: string): number | undefined {
  try {
    return statSync(p).mode;
  } catch {
    return undefined;
  }
}

export interface ProbeOptions {
  /** The public listener's base URL, e.g. `https://gateway.example.com`. */
  url: string;
  /** The admin listener's base URL; probed only when given. */
  adminUrl?: string;
  /** Per request; 5000 by default. */
  timeoutMs?: number;
  fetch?: typeof fetch;
}

type ProbeResult = { reached: true; response: Response } | { reached: false; error: string };

/** Probes a running deployment from outside, with no credential, for answers it must refuse. */
export async function probeDeployment(options: ProbeOptions): Promise<Finding[]> {
  const { timeoutMs = 5000 } = options;
  const fetchFn = options.fetch ?? fetch;
  const request = async (url: string, init: RequestInit = {}): Promise<ProbeResult> => {
    try {
      // redirect: 'manual' so a 3xx is judged as it is, not by where it leads.
      const response = await fetchFn(url, { ...init, redirect: 'manual', signal: AbortSignal.timeout(timeoutMs) });
      return { reached: true, response };
    } catch (err) {
      return { reached: false, error: describeFetchError(err, timeoutMs) };
    }
  };

  const findings: Finding[] = [];
  const base = baseUrl(options.url);
  if (!base) {
    findings.push({ level: 'fail', check: 'public.url', message: `${options.url} is not an http:// or https:// URL` });
  } else {
    findings.push(...(await probePublic(base, request)));
  }

  if (options.adminUrl !== undefined) {
    const adminBase = baseUrl(options.adminUrl);
    if (!adminBase) findings.push({ level: 'fail', check: 'admin.url', message: `${options.adminUrl} is not an http:// or https:// URL` });
    else findings.push(...(await probeAdmin(adminBase, request)));
  }
  return findings;
}

type Request = (url: string, init?: RequestInit) => Promise<ProbeResult>;

async function probePublic(base: string, request: Request): Promise<Finding[]> {
  const findings: Finding[] = [];
  const healthUrl = `${base}/health`;
  const health = await request(healthUrl);
  if (!health.reached) {
    // Nothing else can be learned from a listener that does not answer.
    return [{ level: 'fail', check: 'public.health', message: `${healthUrl} is unreachable (${health.error})` }];
  }
  const status = await healthStatus(health.response);
  findings.push(
    status !== undefined
      ? { level: 'ok', check: 'public.health', message: `${healthUrl} answers 200 (status ${status})` }
      : { level: 'warn', check: 'public.health', message: `${healthUrl} answers ${health.response.status} without a JSON status` },
  );
  findings.push(
    health.response.headers.has('x-powered-by')
      ? { level: 'warn', check: 'public.headers', message: 'responses carry an X-Powered-By header, which tells attackers what to target; remove it' }
      : { level: 'ok', check: 'public.headers', message: 'no X-Powered-By header' },
  );

  const whoami = `${base}/api/whoami`;
  const anonymous = await request(whoami);
  findings.push(refusalFinding('public.whoami', 'GET /api/whoami without credentials', anonymous, [401]));
  if (anonymous.reached && anonymous.response.status === 401 && !anonymous.response.headers.has('www-authenticate')) {
    // RFC 9110 §15.5.2: a 401 must carry a WWW-Authenticate challenge.
    findings.push({ level: 'warn', check: 'public.whoami', message: 'GET /api/whoami answers 401 without a WWW-Authenticate challenge (RFC 9110 §15.5.2)' });
  }
  // 400 is the right answer if the gateway judges the key malformed rather than unknown.
  findings.push(
    refusalFinding('public.whoami.invalidKey', 'GET /api/whoami with an invalid key', await request(whoami, { headers: { authorization: 'Bearer bwk_test_invalid' } }), [
      400, 401, 403,
    ]),
  );

  const mcp = await request(`${base}/mcp`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({
      jsonrpc: '2.0',
      id: 1,
      method: 'initialize',
      params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'bulwark-doctor', version: '1' } },
    }),
  });
  if (mcp.reached && mcp.response.status === 404) {
    await discardBody(mcp.response);
    findings.push({ level: 'ok', check: 'public.mcp', message: 'POST /mcp is not served' });
  } else {
    findings.push(refusalFinding('public.mcp', 'POST /mcp without credentials', mcp, [401, 403]));
  }
  return findings;
}

async function probeAdmin(base: string, request: Request): Promise<Finding[]> {
  const findings: Finding[] = [];
  const paths: [check: string, path: string][] = [
    ['admin.root', '/'],
    ['admin.keys', '/api/keys'],
    ['admin.auditEvents', '/api/audit/events'],
  ];
  for (const [check, pathname] of paths) {
    const result = await request(`${base}${pathname}`);
    if (!result.reached) {
      // Timeouts count too: a firewall that drops packets looks exactly like this.
      return [{ level: 'ok', check: 'admin.reachable', message: `admin listener ${base} not reachable from here (good if firewalled): ${result.error}` }];
    }
    const { status } = result.response;
    if (status === 404) {
      await discardBody(result.response);
      findings.push({ level: 'ok', check, message: `GET ${pathname} is not served` });
    } else if (status >= 300 && status < 400) {
      // A redirect (to a login page) does not answer the request.
      await discardBody(result.response);
      findings.push({ level: 'ok', check, message: `GET ${pathname} without credentials redirects (${status})` });
    } else {
      findings.push(refusalFinding(check, `GET ${pathname} without credentials`, result, [401, 403]));
    }
  }
  return findings;
}

/** fail on any 2xx, ok on an expected refusal, warn otherwise. */
function refusalFinding(check: string, what: string, result: ProbeResult, refusals: readonly number[]): Finding {
  if (!result.reached) return { level: 'warn', check, message: `${what}: no answer (${result.error})` };
  const { status } = result.response;
  void discardBody(result.response);
  if (status >= 200 && status < 300) return { level: 'fail', check, message: `${what} answers ${status}: it must refuse` };
  if (refusals.includes(status)) return { level: 'ok', check, message: `${what} is refused with ${status}` };
  return { level: 'warn', check, message: `${what} answers ${status}; expected ${refusals.join(' or ')}` };
}

async function healthStatus(response: Response): Promise<string | undefined> {
  if (response.status !== 200) {
    await discardBody(response);
    return undefined;
  }
  try {
    const body: unknown = await response.json();
    const status = (body as { status?: unknown } | null)?.status;
    return typeof status === 'string' ? status : undefined;
  } catch {
    return undefined;
  }
}

async function discardBody(response: Response): Promise<void> {
  try {
    await response.body?.cancel();
  } catch {
    // Already consumed or closed: nothing to free.
  }
}

function baseUrl(raw: string): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(raw);
  } catch {
    return undefined;
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') return undefined;
  return `${parsed.origin}${parsed.pathname.replace(/\/+$/, '')}`;
}

function describeFetchError(err: unknown, timeoutMs: number): string {
  if (err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError')) return `no answer within ${timeoutMs} ms`;
  const cause = err instanceof Error ? (err.cause as { code?: unknown; message?: unknown } | undefined) : undefined;
  if (typeof cause?.code === 'string') return cause.code;
  if (typeof cause?.message === 'string') return cause.message;
  return err instanceof Error ? err.message : String(err);
}

/** Aligned lines for people (`  ok    check   message`), then `N ok, N warnings, N failures`. */
export function formatFindings(findings: Finding[]): string {
  const labels = { ok: 'ok', warn: 'WARN', fail: 'FAIL' } as const;
  const width = Math.max(16, ...findings.map((f) => f.check.length));
  const lines = findings.map((f) => `  ${labels[f.level].padEnd(6)}${f.check.padEnd(width)} ${f.message}`);
  const count = (level: Finding['level']) => findings.filter((f) => f.level === level).length;
  const warnings = count('warn');
  const failures = count('fail');
  lines.push(`${count('ok')} ok, ${warnings} warning${warnings === 1 ? '' : 's'}, ${failures} failure${failures === 1 ? '' : 's'}`);
  return `${lines.join('\n')}\n`;
}

/** 1 (a check failed, as `EXIT.checkFailed`) if any finding is a failure, else 0. */
export function doctorExitCode(findings: Finding[]): number {
  return findings.some((f) => f.level === 'fail') ? 1 : 0;
}
