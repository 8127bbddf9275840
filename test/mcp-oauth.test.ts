/**
 * `/mcp` as an OAuth 2.1 protected resource (MCP authorization spec): the RFC 9728 metadata
 * names the configured authorization server, and an access token from it is accepted on `/mcp`
 * only when issued for this resource (RFC 8707: audience = the MCP resource URL) — a token for
 * Bulwark's other routes is refused there, and the other way round.
 */
import { generateKeyPairSync } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { SignJWT, type JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TestBulwark, startTestBulwark } from './helpers/runtime.js';

const IDP = 'https://idp.test';
const PUBLIC_URL = 'https://bulwark.test';
const API_AUDIENCE = 'bulwark-api';

describe('/mcp with OAuth access tokens', () => {
  let b: TestBulwark;
  let jwks: Server;
  const provider = generateKeyPairSync('ec', { namedCurve: 'P-256' });

  beforeAll(async () => {
    const publicJwk = { ...(provider.publicKey.export({ format: 'jwk' }) as JWK), kid: 'k1', alg: 'ES256', use: 'sig' };
    jwks = createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [publicJwk] })));
    await new Promise<void>((resolve) => jwks.listen(0, '127.0.0.1', resolve));
    const jwksUrl = `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/jwks`;
    b = await startTestBulwark(
      'postgres',
      { BULWARK_PUBLIC_URL: PUBLIC_URL },
      { listen: true, file: { oidc: { issuer: IDP, audience: API_AUDIENCE, jwksUrl, scopeMap: { 'mcp.use': ['write'] } } } },
    );
  });

  afterAll(async () => {
    await b?.close();
    await new Promise<void>((resolve) => jwks?.close(() => resolve()));
  });

  function token(audience: string): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ sub: 'agent-7', iss: IDP, aud: audience, iat: now, exp: now + 300, scope: 'mcp.use' }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).sign(provider.privateKey);
  }

  const initialize = (bearer: string) =>
    fetch(`${b.publicUrl}/mcp`, {
      method: 'POST',
      headers: { authorization: `Bearer ${bearer}`, accept: 'application/json, text/event-stream', 'content-type': 'application/json' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-11-25', capabilities: {}, clientInfo: { name: 'oauth-test', version: '1' } } }),
    });

  it('names the authorization server and the resource in its metadata', async () => {
    const doc = (await (await fetch(`${b.publicUrl}/.well-known/oauth-protected-resource/mcp`)).json()) as Record<string, unknown>;
    expect(doc).toMatchObject({ resource: `${PUBLIC_URL}/mcp`, authorization_servers: [IDP] });
  });

  it('accepts a token issued for the MCP resource, with the mapped scopes', async () => {
    const response = await initialize(await token(`${PUBLIC_URL}/mcp`));
    expect(response.status).toBe(200);
    expect(response.headers.get('mcp-session-id')).toMatch(/^[A-Za-z0-9_-]{43}$/);
    await response.body?.cancel();
  });

  it("refuses a token issued for Bulwark's API on /mcp, with the challenge that points to the metadata", async () => {
    const apiToken = await token(API_AUDIENCE);
    const response = await initialize(apiToken);
    expect(response.status).toBe(401);
    const challenge = response.headers.get('www-authenticate') ?? '';
    expect(challenge).toContain('error="invalid_token"');
    expect(challenge).toContain(`resource_metadata="${PUBLIC_URL}/.well-known/oauth-protected-resource/mcp"`);
    // The same token is good where it was meant for.
    const whoami = await fetch(`${b.publicUrl}/api/whoami`, { headers: { authorization: `Bearer ${apiToken}` } });
    expect(whoami.status).toBe(200);
    // And the MCP token is not good there.
    const wrongWay = await fetch(`${b.publicUrl}/api/whoami`, { headers: { authorization: `Bearer ${await token(`${PUBLIC_URL}/mcp`)}` } });
    expect(wrongWay.status).toBe(401);
    await b.runtime.flush();
    const failures = await b.runtime.auditReader.tail({ type: 'auth.failure', limit: 20 });
    expect(failures.find((e) => e.path === '/mcp')).toMatchObject({ details: { reason: 'wrong_audience' } });
  });
});
