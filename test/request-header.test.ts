/**
 * `requestHeader` reads the socket's raw header list instead of web Headers; it must give what
 * `Headers.get` would, repeats included, since authentication and the Host check rely on it.
 */
import type { AddressInfo } from 'node:net';
import { connect } from 'node:net';
import { createAdaptorServer } from '@hono/node-server';
import { Hono } from 'hono';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requestHeader } from '../src/http/client-info.js';

const NAMES = ['host', 'authorization', 'x-api-key', 'cookie', 'user-agent', 'x-absent'];

/** Sends `head` as the raw request head and returns the JSON body of the answer. */
function rawRequest(port: number, head: string): Promise<Record<string, { ours: string | null; web: string | null }>> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.write(`${head}Connection: close\r\n\r\n`));
    let text = '';
    socket.on('data', (chunk) => (text += chunk.toString('utf8')));
    socket.on('end', () => resolve(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4))));
    socket.on('error', reject);
  });
}

describe('requestHeader on Node', () => {
  let server: ReturnType<typeof createAdaptorServer>;
  let port: number;
  beforeAll(async () => {
    const app = new Hono();
    app.get('/', (c) => {
      const out: Record<string, { ours: string | null; web: string | null }> = {};
      // Ours first: web Headers is then built only for the comparison.
      for (const name of NAMES) out[name] = { ours: requestHeader(c, name) ?? null, web: null };
      for (const name of NAMES) out[name]!.web = c.req.raw.headers.get(name);
      return c.json(out);
    });
    server = createAdaptorServer({ fetch: app.fetch });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  it('joins a repeated Authorization or Host as web Headers does, where Node keeps only the first', async () => {
    const answer = await rawRequest(port, 'GET / HTTP/1.1\r\nHost: a.example\r\nhost: b.example\r\nAuthorization: Bearer first\r\nAUTHORIZATION: Bearer second\r\n');
    expect(answer.authorization).toEqual({ ours: 'Bearer first, Bearer second', web: 'Bearer first, Bearer second' });
    expect(answer.host).toEqual({ ours: 'a.example, b.example', web: 'a.example, b.example' });
  });

  it('matches names in any case, trims values, and gives undefined for an absent header', async () => {
    const answer = await rawRequest(port, 'GET / HTTP/1.1\r\nHOST: h\r\nX-Api-Key:   bwk_x  \r\nCookie: a=1\r\ncookie: b=2\r\nUser-Agent: t/1\r\n');
    for (const name of NAMES) expect(answer[name]!.ours, name).toBe(answer[name]!.web);
    expect(answer['x-api-key']!.ours).toBe('bwk_x');
    expect(answer['x-absent']!.ours).toBeNull();
  });
});
