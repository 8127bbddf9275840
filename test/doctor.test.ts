/**
 * `bulwark doctor`: `probeDeployment` against small real Hono servers on loopback (one safe,
 * several that answer what they must refuse, one that is gone), and `localFindings` against
 * real temp dirs and configs built by `loadConfig`. Secrets are generated at run time and
 * checked never to appear in a finding.
 */
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { serve, type ServerType } from '@hono/node-server';
import { Hono } from 'hono';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { doctorExitCode, type Finding, formatFindings, localFindings, probeDeployment } from '../src/cli/doctor.js';
import { loadConfig } from '../src/config/load.js';
import { secretWeakness } from '../src/config/safety.js';

const servers: ServerType[] = [];
const tempDirs: string[] = [];
afterAll(async () => {
  await Promise.all(servers.map(close));
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

function close(server: ServerType): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

/** Serves `app` on an ephemeral loopback port and returns its base URL. */
async function listen(app: Hono): Promise<string> {
  const server = await new Promise<ServerType>((resolve) => {
    const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
  });
  servers.push(server);
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** A URL nobody listens on: a port that was just bound and closed. */
async function closedPortUrl(): Promise<string> {
  const url = await listen(new Hono());
  const server = servers.pop() as ServerType;
  await close(server);
  return url;
}

type Overrides = { whoami?: boolean; mcp?: boolean; adminRoot?: boolean };

/** A public app refusing what it should, except the routes named in `open`. */
function publicApp(open: Overrides = {}): Hono {
  const refuse = (c: { json: (body: unknown, status: 401, headers: Record<string, string>) => Response }) =>
    c.json({ error: { code: 'unauthorized', message: 'A credential is required.' } }, 401, { 'WWW-Authenticate': 'Bearer realm="bulwark"' });
  return new Hono()
    .get('/health', (c) => c.json({ status: 'ok', version: 'test' }))
    .get('/api/whoami', (c) => (open.whoami ? c.json({ tenant: 'default' }) : refuse(c)))
    .post('/mcp', (c) => (open.mcp ? c.json({ jsonrpc: '2.0', id: 1, result: {} }) : refuse(c)));
}

function adminApp(open: Overrides = {}): Hono {
  const refuse = (c: { json: (body: unknown, status: 401) => Response }) => c.json({ error: { code: 'unauthorized', message: 'A credential is required.' } }, 401);
  return new Hono()
    .get('/', (c) => (open.adminRoot ? c.html('<h1>Bulwark admin</h1>') : refuse(c)))
    .get('/api/keys', refuse)
    .get('/api/audit/events', refuse);
}

const failures = (findings: Finding[]) => findings.filter((f) => f.level === 'fail');

describe('probeDeployment', () => {
  let safeUrl: string;
  let safeAdminUrl: string;
  beforeAll(async () => {
    safeUrl = await listen(publicApp());
    safeAdminUrl = await listen(adminApp());
  });

  it('finds nothing to fail on a deployment that refuses every anonymous request', async () => {
    const findings = await probeDeployment({ url: safeUrl, adminUrl: safeAdminUrl });
    expect(failures(findings)).toEqual([]);
    expect(findings.filter((f) => f.level === 'warn')).toEqual([]);
    expect(findings.map((f) => f.check)).toEqual(
      expect.arrayContaining(['public.health', 'public.whoami', 'public.whoami.invalidKey', 'public.mcp', 'admin.root', 'admin.keys', 'admin.auditEvents']),
    );
    expect(doctorExitCode(findings)).toBe(0);
  });

  it('fails a public listener whose /api/whoami answers without credentials', async () => {
    const findings = await probeDeployment({ url: await listen(publicApp({ whoami: true })) });
    const whoami = failures(findings).filter((f) => f.check.includes('whoami'));
    expect(whoami.map((f) => f.check)).toEqual(['public.whoami', 'public.whoami.invalidKey']);
    expect(whoami[0]?.message).toMatch(/whoami without credentials answers 200/);
    expect(doctorExitCode(findings)).toBe(1);
  });

  it('fails an admin listener whose / answers without credentials', async () => {
    const findings = await probeDeployment({ url: safeUrl, adminUrl: await listen(adminApp({ adminRoot: true })) });
    expect(failures(findings)).toEqual([expect.objectContaining({ check: 'admin.root', message: expect.stringMatching(/answers 200/) })]);
  });

  it('fails an /mcp endpoint that initializes a session without credentials', async () => {
    const findings = await probeDeployment({ url: await listen(publicApp({ mcp: true })) });
    expect(failures(findings)).toEqual([expect.objectContaining({ check: 'public.mcp' })]);
  });

  it('reports /mcp as not served, not as a failure, when it answers 404', async () => {
    const url = await listen(new Hono().get('/health', (c) => c.json({ status: 'ok' })).get('/api/whoami', (c) => c.text('no', 401)));
    const findings = await probeDeployment({ url });
    expect(findings.find((f) => f.check === 'public.mcp')).toEqual({ level: 'ok', check: 'public.mcp', message: 'POST /mcp is not served' });
  });

  it('warns when responses carry X-Powered-By', async () => {
    const app = publicApp();
    const url = await listen(
      new Hono()
        .use(async (c, next) => {
          await next();
          c.header('X-Powered-By', 'Express');
        })
        .route('/', app),
    );
    const findings = await probeDeployment({ url });
    expect(findings.find((f) => f.check === 'public.headers')?.level).toBe('warn');
  });

  it('fails the health check, naming the URL, when nothing listens', async () => {
    const url = await closedPortUrl();
    const findings = await probeDeployment({ url, timeoutMs: 2000 });
    expect(findings).toEqual([{ level: 'fail', check: 'public.health', message: expect.stringContaining(`${url}/health is unreachable`) }]);
  });

  it('reports an unreachable admin listener as ok, since it may be firewalled', async () => {
    const findings = await probeDeployment({ url: safeUrl, adminUrl: await closedPortUrl() });
    expect(findings.find((f) => f.check === 'admin.reachable')).toEqual(expect.objectContaining({ level: 'ok', message: expect.stringMatching(/not reachable from here/) }));
    expect(failures(findings)).toEqual([]);
  });

  it('fails a URL that is not http or https without sending anything', async () => {
    const findings = await probeDeployment({ url: 'ftp://127.0.0.1/', fetch: () => Promise.reject(new Error('must not be called')) });
    expect(findings).toEqual([expect.objectContaining({ level: 'fail', check: 'public.url' })]);
  });
});

describe('localFindings', () => {
  function tempDir(): string {
    const dir = mkdtempSync(path.join(tmpdir(), 'bulwark-doctor-'));
    tempDirs.push(dir);
    return dir;
  }
  /** A cwd whose `./.bulwark` data dir exists with `mode`. */
  function installWithDataDir(mode: number): string {
    const cwd = tempDir();
    mkdirSync(path.join(cwd, '.bulwark'));
    chmodSync(path.join(cwd, '.bulwark'), mode);
    return cwd;
  }
  // Random, and drawn again in the rare case it holds a word the safety check refuses ('admin', …).
  const strongSecret = (): string => {
    for (;;) {
      const secret = randomBytes(32).toString('base64url');
      if (!secretWeakness(secret)) return secret;
    }
  };
  const dbPassword = (): string => randomBytes(16).toString('hex');
  /** Production with every required secret strong, so only the setting under test can fail. */
  const productionEnv = (): Record<string, string> => ({
    BULWARK_MODE: 'production',
    BULWARK_ALLOWED_HOSTS: 'bulwark.example.com',
    BULWARK_ENCRYPTION_KEYS: randomBytes(32).toString('base64'),
    BULWARK_JWT_SECRET: strongSecret(),
  });
  const find = (findings: Finding[], check: string) => findings.filter((f) => f.check === check);

  it('fails a data dir open to group or other, naming it', () => {
    const cwd = installWithDataDir(0o755);
    const findings = localFindings(loadConfig({ env: {}, cwd }));
    expect(find(findings, 'files.dataDir')).toEqual([
      { level: 'fail', check: 'files.dataDir', message: expect.stringContaining(path.join(cwd, '.bulwark')) },
    ]);
    expect(find(findings, 'files.dataDir')[0]?.message).toMatch(/mode 755/);
  });

  it('accepts a data dir with mode 700', () => {
    const cwd = installWithDataDir(0o700);
    const findings = localFindings(loadConfig({ env: {}, cwd }));
    expect(find(findings, 'files.dataDir')).toEqual([expect.objectContaining({ level: 'ok' })]);
  });

  it('fails an admin.token readable by others', () => {
    const cwd = installWithDataDir(0o700);
    const token = path.join(cwd, '.bulwark', 'admin.token');
    writeFileSync(token, `${strongSecret()}\n`);
    chmodSync(token, 0o644);
    const findings = localFindings(loadConfig({ env: {}, cwd }));
    expect(find(findings, 'files.adminToken')).toEqual([{ level: 'fail', check: 'files.adminToken', message: expect.stringMatching(/admin\.token .*mode 644.*chmod 600/) }]);
  });

  it('fails a weak JWT secret in production without echoing it', () => {
    const weak = randomBytes(8).toString('hex');
    const config = loadConfig({ env: { ...productionEnv(), BULWARK_JWT_SECRET: weak }, cwd: installWithDataDir(0o700) });
    const findings = localFindings(config);
    expect(find(findings, 'secrets.jwtSecret')).toEqual([{ level: 'fail', check: 'secrets.jwtSecret', message: 'BULWARK_JWT_SECRET: is shorter than 32 bytes' }]);
    // Reported once, not again from safetyProblems.
    expect(findings.filter((f) => f.message.includes('BULWARK_JWT_SECRET'))).toHaveLength(1);
    expect(JSON.stringify(findings)).not.toContain(weak);
    expect(formatFindings(findings)).not.toContain(weak);
  });

  it('only warns about the same weak JWT secret in development', () => {
    const config = loadConfig({ env: { BULWARK_JWT_SECRET: randomBytes(8).toString('hex') }, cwd: installWithDataDir(0o700) });
    expect(find(localFindings(config), 'secrets.jwtSecret')).toEqual([expect.objectContaining({ level: 'warn' })]);
  });

  it('warns about a remote database without sslmode in development, without showing the URL', () => {
    const password = dbPassword();
    const config = loadConfig({ env: { DATABASE_URL: `postgres://bulwark:${password}@db.internal:5432/bulwark` }, cwd: installWithDataDir(0o700) });
    const findings = localFindings(config);
    expect(find(findings, 'database.tls')).toEqual([expect.objectContaining({ level: 'warn', message: expect.stringMatching(/sslmode=require/) })]);
    expect(JSON.stringify(findings)).not.toContain(password);
  });

  it('fails a remote database without sslmode in production, once', () => {
    const env = { ...productionEnv(), DATABASE_URL: `postgres://bulwark:${dbPassword()}@db.internal:5432/bulwark` };
    const findings = localFindings(loadConfig({ env, cwd: installWithDataDir(0o700) }));
    expect(findings.filter((f) => f.message.startsWith('DATABASE_URL'))).toEqual([expect.objectContaining({ level: 'fail', check: 'database.tls' })]);
  });

  it('accepts a remote database reached with sslmode=verify-full', () => {
    const env = { ...productionEnv(), DATABASE_URL: `postgres://bulwark:${dbPassword()}@db.internal:5432/bulwark?sslmode=verify-full` };
    const findings = localFindings(loadConfig({ env, cwd: installWithDataDir(0o700) }));
    expect(find(findings, 'database.tls')).toEqual([expect.objectContaining({ level: 'ok' })]);
  });

  it('says the database is embedded when no DATABASE_URL is set', () => {
    const findings = localFindings(loadConfig({ env: {}, cwd: installWithDataDir(0o700) }));
    expect(find(findings, 'database.tls')).toEqual([expect.objectContaining({ level: 'ok', message: expect.stringMatching(/embedded/) })]);
  });

  it('warns to firewall an admin listener bound to 0.0.0.0, in both modes', () => {
    for (const env of [{}, productionEnv()]) {
      const findings = localFindings(loadConfig({ env: { ...env, BULWARK_ADMIN_HOST: '0.0.0.0' }, cwd: installWithDataDir(0o700) }));
      expect(find(findings, 'listen.admin')).toEqual([expect.objectContaining({ level: 'warn', message: expect.stringMatching(/firewall/) })]);
    }
  });

  it('fails production without an encryption key, once', () => {
    const { BULWARK_ENCRYPTION_KEYS: _omitted, ...env } = productionEnv();
    const findings = localFindings(loadConfig({ env, cwd: installWithDataDir(0o700) }));
    expect(findings.filter((f) => f.message.includes('BULWARK_ENCRYPTION_KEYS'))).toEqual([expect.objectContaining({ level: 'fail', check: 'secrets.encryptionKeys' })]);
  });

  it('finds no failure in a sound production install', () => {
    const findings = localFindings(loadConfig({ env: productionEnv(), cwd: installWithDataDir(0o700) }));
    expect(failures(findings)).toEqual([]);
    expect(doctorExitCode(findings)).toBe(0);
  });

  it('reports a safety refusal it does not check itself, such as auth off on a public listener', () => {
    const findings = localFindings(loadConfig({ env: { BULWARK_AUTH: 'off', BULWARK_HOST: '0.0.0.0' }, cwd: installWithDataDir(0o700) }));
    expect(failures(findings)).toEqual([expect.objectContaining({ check: 'config.safety', message: expect.stringMatching(/BULWARK_AUTH: off is allowed only/) })]);
  });
});

describe('formatFindings', () => {
  it('aligns one line per finding and ends with the counts', () => {
    const text = formatFindings([
      { level: 'ok', check: 'public.health', message: 'answers' },
      { level: 'warn', check: 'listen.admin', message: 'firewall it' },
      { level: 'fail', check: 'public.whoami', message: 'answers 200' },
    ]);
    expect(text.split('\n')).toEqual([
      '  ok    public.health    answers',
      '  WARN  listen.admin     firewall it',
      '  FAIL  public.whoami    answers 200',
      '1 ok, 1 warning, 1 failure',
      '',
    ]);
  });
});
