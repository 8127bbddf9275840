/** Alert sinks (src/monitor/alerts.ts): what they post, and that a failed delivery is reported, never thrown. */
import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAlerter, slackSink, webhookSink } from '../src/monitor/alerts.js';

describe('alert sinks', () => {
  let server: Server;
  let url: string;
  const posts: { path: string; body: unknown }[] = [];

  beforeAll(async () => {
    server = createServer((req, res) => {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        posts.push({ path: req.url ?? '', body: JSON.parse(body) });
        res.statusCode = req.url === '/broken' ? 500 : 200;
        res.end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise((resolve) => server.close(resolve)));

  it('posts a Slack message and a JSON webhook for one alert', async () => {
    const alerter = createAlerter([slackSink(`${url}/slack`), webhookSink(`${url}/hook`)], () => {});
    alerter.alert({ type: 'credentials.refresh_failed', severity: 'critical', tenant: 'acme', message: 'could not refresh' });
    await alerter.settled();
    expect(posts.find((p) => p.path === '/slack')?.body).toEqual({ text: ':rotating_light: Bulwark credentials.refresh_failed (tenant acme): could not refresh' });
    expect(posts.find((p) => p.path === '/hook')?.body).toMatchObject({ type: 'credentials.refresh_failed', tenant: 'acme', source: 'bulwark', time: expect.any(String) });
  });

  it('reports a failed delivery without throwing and without the URL', async () => {
    const failures: string[] = [];
    const alerter = createAlerter([webhookSink(`${url}/broken`)], (sink, error) => failures.push(`${sink}: ${error}`));
    alerter.alert({ type: 't', severity: 'warning', message: 'm' });
    await alerter.settled();
    expect(failures).toEqual(['webhook: answered 500']);
  });
});
