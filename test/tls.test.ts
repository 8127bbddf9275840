/**
 * Direct HTTPS: the built server with BULWARK_TLS_CERT/KEY, reached over real TLS sockets.
 * The certificate is made by openssl for this run only.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { connect } from 'node:tls';
import { Agent, fetch } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ServerProcess, runCli, startServe } from './helpers/process.js';

function makeCertificate(dir: string): { cert: string; key: string } {
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
    '-subj', '/CN=bulwark.test', '-addext', 'subjectAltName=DNS:bulwark.test,IP:127.0.0.1',
    '-keyout', key, '-out', cert,
  ], { stdio: 'ignore' });
  return { cert, key };
}

/** Resolves with the negotiated protocol, or rejects with the handshake error. */
function handshake(url: string, options: { minVersion?: 'TLSv1' | 'TLSv1.2'; maxVersion?: 'TLSv1.1' | 'TLSv1.2' | 'TLSv1.3'; ciphers?: string }): Promise<string> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect({ host: hostname, port: Number(port), rejectUnauthorized: false, ...options }, () => {
      const protocol = socket.getProtocol() ?? '';
      socket.end();
      resolve(protocol);
    });
    socket.once('error', reject);
  });
}

describe('direct HTTPS on both listeners', () => {
  let dir: string;
  let server: ServerProcess;
  let env: Record<string, string>;
  let agent: Agent;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'bulwark-tls-'));
    const { cert, key } = makeCertificate(dir);
    env = {
      BULWARK_DATA_DIR: path.join(dir, 'data'),
      BULWARK_PORT: '0',
      BULWARK_ADMIN_PORT: '0',
      BULWARK_TLS_CERT: cert,
      BULWARK_TLS_KEY: key,
      BULWARK_ADMIN_TLS: 'true',
    };
    server = await startServe(env, env.BULWARK_DATA_DIR as string);
    agent = new Agent({ connect: { ca: readFileSync(cert) } });
  });

  afterAll(async () => {
    await agent?.close();
    if (server) await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves the public listener over HTTPS with HSTS', async () => {
    expect(server.publicUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const response = await fetch(`${server.publicUrl}/health`, { dispatcher: agent });
    expect(response.status).toBe(200);
    expect(response.headers.get('strict-transport-security')).toMatch(/^max-age=\d+; includeSubDomains$/);
  });

  it('refuses TLS 1.1 and negotiates 1.2 only with forward-secret AEAD suites', async () => {
    await expect(handshake(server.publicUrl, { minVersion: 'TLSv1', maxVersion: 'TLSv1.1' })).rejects.toThrow();
    await expect(handshake(server.publicUrl, { maxVersion: 'TLSv1.2', ciphers: 'AES128-SHA:AES256-SHA' })).rejects.toThrow();
    expect(await handshake(server.publicUrl, { maxVersion: 'TLSv1.2' })).toBe('TLSv1.2');
    expect(await handshake(server.publicUrl, {})).toBe('TLSv1.3');
  });

  it('serves the admin listener over HTTPS, and the CLI reaches it by pinning the configured certificate', async () => {
    expect(server.adminUrl).toMatch(/^https:/);
    const created = await runCli(['keys', 'create', '--scopes', 'read', '--json'], env);
    expect(created.code, created.stderr).toBe(0);
    const { key } = JSON.parse(created.stdout) as { key: string };
    const response = await fetch(`${server.publicUrl}/api/whoami`, { dispatcher: agent, headers: { authorization: `Bearer ${key}` } });
    expect(response.status).toBe(200);
  });

  it('makes the CLI refuse an admin listener whose certificate is not the configured one', async () => {
    const other = makeCertificate(mkdtempSync(path.join(dir, 'other-')));
    const result = await runCli(['keys', 'list', '--json'], { ...env, BULWARK_TLS_CERT: other.cert, BULWARK_TLS_KEY: other.key });
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain('presented a certificate other than BULWARK_TLS_CERT');
  });
});
