/**
 * `/openapi.json`: a valid OpenAPI 3.1 document (checked with a real validator), public, that
 * lists every route the public listener registers and no route it does not; its request
 * schemas are the ones the routes validate with.
 */
import { Validator } from '@seriousme/openapi-schema-validator';
import { inspectRoutes } from 'hono/dev';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MessageBody } from '../src/agent/routes.js';
import { documentedRoutes } from '../src/http/openapi.js';
import { type TestBulwark, startTestBulwark } from './helpers/runtime.js';

describe('GET /openapi.json', () => {
  let b: TestBulwark;
  let document: Record<string, unknown>;

  beforeAll(async () => {
    b = await startTestBulwark('postgres', { BULWARK_PUBLIC_URL: 'https://bulwark.example' }, { listen: true });
    const response = await fetch(new URL('/openapi.json', b.publicUrl));
    expect(response.status).toBe(200);
    document = (await response.json()) as Record<string, unknown>;
  });

  afterAll(async () => {
    await b?.close();
  });

  it('is a valid OpenAPI 3.1 document', async () => {
    const result = await new Validator().validate(structuredClone(document));
    expect(result.errors ?? [], JSON.stringify(result.errors)).toEqual([]);
    expect(result.valid).toBe(true);
    expect(document).toMatchObject({ openapi: '3.1.0', servers: [{ url: 'https://bulwark.example' }] });
  });

  it('documents exactly the routes the public listener registers', () => {
    // Routes, not middleware: a path's handlers that all take `next` are middleware (hono/dev marks them).
    const registered = new Set(
      inspectRoutes(b.publicApp)
        .filter((r) => !r.isMiddleware)
        .flatMap((r) => (r.method === 'ALL' ? ['GET', 'POST', 'DELETE'].map((m) => `${m} ${r.path}`) : [`${r.method} ${r.path}`]))
        .map((route) => route.replace(/\/\*$/, '/:path')),
    );
    const documented = new Set(documentedRoutes({ jwt: b.runtime.jwtIssuer !== undefined }));
    expect([...registered].filter((r) => !documented.has(r)), 'registered but not documented').toEqual([]);
    expect([...documented].filter((r) => !registered.has(r)), 'documented but not registered').toEqual([]);
    expect(registered.size).toBeGreaterThan(20);
  });

  it('describes security, scopes and error shapes, and is served without a credential', () => {
    const paths = document.paths as Record<string, Record<string, { security?: unknown[]; responses: Record<string, unknown>; requestBody?: unknown }>>;
    expect(paths['/health']?.get?.security).toEqual([]);
    expect(paths['/api/message']?.post?.security).toEqual([{ bearer: ['write'] }, { apiKey: ['write'] }]);
    expect(paths['/api/llm/switch']?.post?.responses).toHaveProperty('403');
    expect(paths['/api/sessions/{id}']?.get?.responses).toHaveProperty('404');
    expect(paths['/api/message']?.post?.responses).toHaveProperty('409');
    expect(paths['/api/events']?.get?.security).toContainEqual({ eventTicket: [] });
    expect(paths['/api/sessions']?.get?.security).not.toContainEqual({ eventTicket: [] });
    expect(JSON.stringify(paths['/v1/messages']?.post?.responses['401'])).toContain('AnthropicError');
    expect((document.components as { securitySchemes: Record<string, unknown> }).securitySchemes).toMatchObject({
      bearer: { type: 'http', scheme: 'bearer' },
      apiKey: { type: 'apiKey', in: 'header', name: 'X-API-Key' },
    });
  });

  it("uses the route's own zod schema for its body", () => {
    const paths = document.paths as Record<string, Record<string, { requestBody: { content: { 'application/json': { schema: Record<string, unknown> } } } }>>;
    const schema = paths['/api/message']?.post?.requestBody.content['application/json'].schema;
    expect(schema).toMatchObject({ type: 'object', required: ['message'], additionalProperties: false });
    expect(Object.keys((schema as { properties: object }).properties).sort()).toEqual(Object.keys(MessageBody.shape).sort());
  });
});
