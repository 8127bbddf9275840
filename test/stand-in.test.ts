/**
 * The Anthropic stand-in itself, driven with plain fetch: authentication and versioning, the
 * Messages API in JSON and SSE, token counting, models, the OAuth refresh grant with rotation, and
 * every injectable fault. Other suites trust it as "Anthropic", so it must fail where Anthropic does.
 */
import Anthropic from '@anthropic-ai/sdk';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { OAUTH_BETA, OAUTH_TOKEN_PATH, type StandIn, startAnthropicStandIn } from './stand-in/anthropic.js';

const API_KEY = 'sk-ant-api03-test-key';
const ACCESS_TOKEN = 'sk-ant-oat01-test-token';
const VERSION = '2023-06-01';

let standIn: StandIn;

beforeAll(async () => {
  standIn = await startAnthropicStandIn();
});
afterAll(async () => {
  await standIn?.close();
});
beforeEach(() => {
  standIn.apiKeys.clear();
  standIn.apiKeys.add(API_KEY);
  standIn.accessTokens.clear();
  standIn.accessTokens.add(ACCESS_TOKEN);
  standIn.refreshTokens.clear();
  standIn.accessTokenLifetimeSeconds = 3600;
  standIn.fault = undefined;
});

async function json(response: Response): Promise<any> {
  return response.json();
}

function apiHeaders(extra: Record<string, string> = {}): Record<string, string> {
  return { 'x-api-key': API_KEY, 'anthropic-version': VERSION, 'content-type': 'application/json', ...extra };
}

function messageBody(overrides: Record<string, unknown> = {}): Record<string, any> {
  return { model: 'claude-sonnet-4-5-20250929', max_tokens: 100, messages: [{ role: 'user', content: 'hello there friend' }], ...overrides };
}

function post(path: string, body: unknown, headers: Record<string, string> = apiHeaders(), signal?: AbortSignal): Promise<Response> {
  return fetch(standIn.url + path, { method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body), signal });
}

interface SseEvent {
  event: string;
  data: any;
}

/** Parses raw SSE text (event:/data: lines, blank-line separated) without any SSE library. */
function parseSse(text: string): SseEvent[] {
  return text
    .split('\n\n')
    .filter((block) => block.trim() !== '')
    .map((block) => {
      const lines = block.split('\n');
      const event = lines.find((line) => line.startsWith('event: '))?.slice('event: '.length) ?? '';
      const data = lines.find((line) => line.startsWith('data: '))?.slice('data: '.length) ?? '';
      return { event, data: JSON.parse(data) };
    });
}

/** Reads a body chunk by chunk until it ends, `stopAfterMs` of silence passes, or it errors. */
async function readChunks(response: Response, stopAfterMs = 1000): Promise<{ text: string; reads: number; outcome: 'done' | 'silent' | 'error' }> {
  const reader = response.body!.getReader();
  const decoder = new TextDecoder();
  let text = '';
  let reads = 0;
  for (;;) {
    let timer: NodeJS.Timeout | undefined;
    const silence = new Promise<'silent'>((resolve) => (timer = setTimeout(() => resolve('silent'), stopAfterMs)));
    try {
      const result = await Promise.race([reader.read(), silence]);
      if (result === 'silent') {
        await reader.cancel().catch(() => {});
        return { text, reads, outcome: 'silent' };
      }
      if (result.done) return { text, reads, outcome: 'done' };
      reads += 1;
      text += decoder.decode(result.value, { stream: true });
    } catch {
      return { text, reads, outcome: 'error' };
    } finally {
      clearTimeout(timer);
    }
  }
}

async function until(condition: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function expectAnthropicError(response: Response, body: any, status: number, type: string) {
  expect(response.status).toBe(status);
  expect(body).toEqual({ type: 'error', error: { type, message: expect.any(String) }, request_id: expect.stringMatching(/^req_\w{24}$/) });
  expect(body.request_id).toBe(response.headers.get('request-id'));
}

describe('authentication and versioning', () => {
  it('refuses a request without credentials with 401 authentication_error', async () => {
    const response = await post('/v1/messages', messageBody(), { 'anthropic-version': VERSION });
    expectAnthropicError(response, await json(response), 401, 'authentication_error');
  });

  it('refuses an unknown x-api-key with 401 "invalid x-api-key"', async () => {
    const response = await post('/v1/messages', messageBody(), apiHeaders({ 'x-api-key': 'sk-ant-api03-wrong' }));
    const body = await json(response);
    expectAnthropicError(response, body, 401, 'authentication_error');
    expect(body.error.message).toBe('invalid x-api-key');
  });

  it('accepts an API key sent as Authorization: Bearer, as SDKs for API version 2026-10-21 send it', async () => {
    const response = await post('/v1/messages', messageBody(), { 'anthropic-version': '2026-10-21', authorization: `Bearer ${API_KEY}` });
    expect(response.status).toBe(200);
    const wrong = await post('/v1/messages', messageBody(), { 'anthropic-version': '2026-10-21', authorization: 'Bearer sk-ant-api03-wrong' });
    expectAnthropicError(wrong, await json(wrong), 401, 'authentication_error');
  });

  it('judges x-api-key, not Authorization, when a request carries both', async () => {
    const response = await post('/v1/messages', messageBody(), apiHeaders({ 'x-api-key': 'sk-ant-api03-wrong', authorization: `Bearer ${API_KEY}` }));
    expectAnthropicError(response, await json(response), 401, 'authentication_error');
  });

  it('accepts an OAuth bearer token only with the oauth beta header', async () => {
    const bearer = { 'anthropic-version': VERSION, authorization: `Bearer ${ACCESS_TOKEN}` };
    const withoutBeta = await post('/v1/messages', messageBody(), bearer);
    const refused = await json(withoutBeta);
    expectAnthropicError(withoutBeta, refused, 401, 'authentication_error');
    expect(refused.error.message).toBe('OAuth authentication is currently not supported.');

    const withBeta = await post('/v1/messages', messageBody(), { ...bearer, 'anthropic-beta': `claude-code-20250219,${OAUTH_BETA}` });
    expect(withBeta.status).toBe(200);
  });

  it('refuses an unknown bearer token even with the oauth beta', async () => {
    const response = await post('/v1/messages', messageBody(), { 'anthropic-version': VERSION, authorization: 'Bearer sk-ant-oat01-nope', 'anthropic-beta': OAUTH_BETA });
    expectAnthropicError(response, await json(response), 401, 'authentication_error');
  });

  it('requires anthropic-version with 400 invalid_request_error and rejects unknown versions', async () => {
    const missing = await post('/v1/messages', messageBody(), { 'x-api-key': API_KEY });
    const body = await json(missing);
    expectAnthropicError(missing, body, 400, 'invalid_request_error');
    expect(body.error.message).toBe('anthropic-version: header is required');

    const unknown = await post('/v1/messages', messageBody(), apiHeaders({ 'anthropic-version': '2099-01-01' }));
    expectAnthropicError(unknown, await json(unknown), 400, 'invalid_request_error');
  });

  it('puts a request-id and rate-limit headers on every API response', async () => {
    const response = await post('/v1/messages', messageBody());
    expect(response.headers.get('request-id')).toMatch(/^req_\w{24}$/);
    expect(response.headers.get('anthropic-ratelimit-requests-remaining')).toMatch(/^\d+$/);
    expect(response.headers.get('anthropic-ratelimit-tokens-reset')).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/);
    const other = await fetch(`${standIn.url}/v1/nowhere`);
    expect(other.headers.get('request-id')).toMatch(/^req_/);
  });

  it('records every request in order with lower-cased headers and the parsed body', async () => {
    const before = standIn.requests.length;
    await post('/v1/messages/count_tokens', { model: 'm', messages: [{ role: 'user', content: 'a' }] }, apiHeaders({ 'X-Custom-Header': 'Yes' }));
    await fetch(`${standIn.url}/v1/models?limit=1`, { headers: apiHeaders() });
    const [first, second] = standIn.requests.slice(before);
    expect(first).toMatchObject({ method: 'POST', path: '/v1/messages/count_tokens', body: { model: 'm' } });
    expect(first!.headers['x-custom-header']).toBe('Yes');
    expect(second).toMatchObject({ method: 'GET', path: '/v1/models?limit=1', body: undefined });
  });
});

describe('POST /v1/messages', () => {
  it('answers a Message object echoing the last user message with usage', async () => {
    const response = await post(
      '/v1/messages',
      messageBody({
        messages: [
          { role: 'user', content: 'first question' },
          { role: 'assistant', content: 'an answer' },
          { role: 'user', content: [{ type: 'text', text: 'hello there' }, { type: 'text', text: 'friend' }] },
        ],
      }),
    );
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^application\/json/);
    const body = await json(response);
    expect(body).toEqual({
      id: expect.stringMatching(/^msg_\w{24}$/),
      type: 'message',
      role: 'assistant',
      model: 'claude-sonnet-4-5-20250929',
      content: [{ type: 'text', text: 'Echo: hello there friend' }],
      stop_reason: 'end_turn',
      stop_sequence: null,
      usage: { input_tokens: expect.any(Number), output_tokens: 4, cache_creation_input_tokens: 0, cache_read_input_tokens: 0, service_tier: 'standard' },
    });
    // ceil(("first question" + "an answer" + "hello there friend").length / 4) + 3
    expect(body.usage.input_tokens).toBe(Math.ceil((14 + 9 + 18) / 4) + 3);
  });

  it('cuts the reply at max_tokens words with stop_reason max_tokens', async () => {
    const body = await json(await post('/v1/messages', messageBody({ max_tokens: 2 })));
    expect(body.content[0].text).toBe('Echo: hello');
    expect(body.stop_reason).toBe('max_tokens');
    expect(body.usage.output_tokens).toBe(2);
  });

  it('reports a cache write, then a cache read, for a system prompt with cache_control', async () => {
    const system = [{ type: 'text', text: `a long stable system prompt ${Math.random()}`, cache_control: { type: 'ephemeral' } }];
    const first = await json(await post('/v1/messages', messageBody({ system })));
    const second = await json(await post('/v1/messages', messageBody({ system })));
    expect(first.usage.cache_creation_input_tokens).toBeGreaterThan(0);
    expect(first.usage.cache_read_input_tokens).toBe(0);
    expect(second.usage.cache_creation_input_tokens).toBe(0);
    expect(second.usage.cache_read_input_tokens).toBe(first.usage.cache_creation_input_tokens);
  });

  it.each([
    ['no model', { model: undefined }, 'model: Field required'],
    ['no max_tokens', { max_tokens: undefined }, 'max_tokens: Field required'],
    ['zero max_tokens', { max_tokens: 0 }, 'max_tokens: Input should be greater than or equal to 1'],
    ['fractional max_tokens', { max_tokens: 1.5 }, 'max_tokens: Input should be a valid integer'],
    ['empty messages', { messages: [] }, 'messages: at least one message is required'],
    ['a bad role', { messages: [{ role: 'system', content: 'x' }] }, "messages.0.role: Input should be 'user' or 'assistant'"],
  ])('refuses a body with %s with 400 invalid_request_error', async (_name, overrides, message) => {
    const response = await post('/v1/messages', messageBody(overrides));
    const body = await json(response);
    expectAnthropicError(response, body, 400, 'invalid_request_error');
    expect(body.error.message).toBe(message);
  });

  it('accepts sampling parameters on 2023-06-01 but refuses them on 2026-10-21', async () => {
    expect((await post('/v1/messages', messageBody({ temperature: 0.2 }))).status).toBe(200);
    for (const parameter of ['temperature', 'top_p', 'top_k']) {
      const response = await post('/v1/messages', messageBody({ [parameter]: 1 }), apiHeaders({ 'anthropic-version': '2026-10-21' }));
      const body = await json(response);
      expectAnthropicError(response, body, 400, 'invalid_request_error');
      expect(body.error.message).toBe(`${parameter}: Extra inputs are not permitted`);
    }
    const counted = await post('/v1/messages/count_tokens', { model: 'm', temperature: 1, messages: [{ role: 'user', content: 'a' }] }, apiHeaders({ 'anthropic-version': '2026-10-21' }));
    expect(counted.status).toBe(400);
  });

  it('refuses, on 2026-10-21 only, a document in an assistant message and citations in a user message', async () => {
    const document = { type: 'document', source: { type: 'text', media_type: 'text/plain', data: 'doc' } };
    const withDocument = messageBody({ messages: [{ role: 'user', content: 'q' }, { role: 'assistant', content: [document] }, { role: 'user', content: 'again' }] });
    const citation = { type: 'char_location', cited_text: 'doc', document_index: 0, start_char_index: 0, end_char_index: 3 };
    const withCitations = messageBody({ messages: [{ role: 'user', content: [{ type: 'text', text: 'q', citations: [citation] }] }] });
    for (const body of [withDocument, withCitations]) {
      expect((await post('/v1/messages', body)).status).toBe(200);
      const response = await post('/v1/messages', body, apiHeaders({ 'anthropic-version': '2026-10-21' }));
      expectAnthropicError(response, await json(response), 400, 'invalid_request_error');
    }
  });

  it('refuses a body that is not JSON with 400 invalid_request_error', async () => {
    const response = await post('/v1/messages', '{not json');
    expectAnthropicError(response, await json(response), 400, 'invalid_request_error');
  });

  it('streams the documented event sequence, one event per chunk on the wire', async () => {
    const response = await post('/v1/messages', messageBody({ stream: true }));
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const { text, reads, outcome } = await readChunks(response);
    expect(outcome).toBe('done');
    const events = parseSse(text);
    expect(events.map((e) => e.event)).toEqual([
      'message_start',
      'content_block_start',
      'ping',
      'content_block_delta',
      'content_block_delta',
      'content_block_delta',
      'content_block_delta',
      'content_block_stop',
      'message_delta',
      'message_stop',
    ]);
    // Each event is its own write; allow a little coalescing by the client's reads.
    expect(reads).toBeGreaterThanOrEqual(events.length - 2);
    for (const e of events) expect(e.data.type).toBe(e.event);

    const [start, blockStart] = events;
    expect(start!.data.message).toMatchObject({ id: expect.stringMatching(/^msg_/), type: 'message', role: 'assistant', content: [], stop_reason: null, stop_sequence: null });
    expect(start!.data.message.usage).toMatchObject({ input_tokens: expect.any(Number), output_tokens: 1, cache_creation_input_tokens: 0, cache_read_input_tokens: 0 });
    expect(blockStart!.data).toEqual({ type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } });
    const deltas = events.filter((e) => e.event === 'content_block_delta');
    expect(deltas.every((e) => e.data.index === 0 && e.data.delta.type === 'text_delta')).toBe(true);
    expect(deltas.map((e) => e.data.delta.text).join('')).toBe('Echo: hello there friend');
    expect(events.at(-2)!.data).toEqual({ type: 'message_delta', delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: { output_tokens: 4 } });
  });

  it('counts a client that disconnects mid-stream as an aborted stream', async () => {
    const aborted = standIn.abortedStreams;
    const controller = new AbortController();
    const long = Array.from({ length: 300 }, (_, i) => `w${i}`).join(' ');
    const response = await post('/v1/messages', messageBody({ stream: true, max_tokens: 1000, messages: [{ role: 'user', content: long }] }), apiHeaders(), controller.signal);
    const reader = response.body!.getReader();
    await reader.read();
    controller.abort();
    await until(() => standIn.abortedStreams === aborted + 1);
    expect(standIn.requests.at(-1)!.aborted).toBe(true);
  });
});

describe('tool use', () => {
  const ECHO_TOOL = { name: 'echo', description: 'Echoes its text', input_schema: { type: 'object', properties: { text: { type: 'string' } } } };
  const CLOCK_TOOL = { name: 'clock', description: 'Tells the time', input_schema: { type: 'object', properties: {} } };
  const ASK_ECHO = 'please use echo {"text":"hi there"} and tell me';

  function toolBody(content: unknown, overrides: Record<string, unknown> = {}): Record<string, any> {
    return messageBody({ tools: [ECHO_TOOL, CLOCK_TOOL], messages: [{ role: 'user', content }], ...overrides });
  }

  /** A conversation whose assistant turn called `calls`, answered by a user turn of `results`. */
  function afterToolUse(results: unknown[], calls: string[] = ['toolu_01AAAAAAAAAAAAAAAAAAAAAAAA']): Record<string, any> {
    return messageBody({
      tools: [ECHO_TOOL],
      messages: [
        { role: 'user', content: 'use echo' },
        { role: 'assistant', content: [{ type: 'text', text: 'Calling echo.' }, ...calls.map((id) => ({ type: 'tool_use', id, name: 'echo', input: {} }))] },
        { role: 'user', content: results },
      ],
    });
  }

  it('calls the tool a user message asks for, with the JSON input after its name and stop_reason tool_use', async () => {
    const body = toolBody(ASK_ECHO);
    const response = await post('/v1/messages', body);
    expect(response.status).toBe(200);
    const message = await json(response);
    expect(message).toMatchObject({ type: 'message', role: 'assistant', stop_reason: 'tool_use', stop_sequence: null });
    expect(message.content).toEqual([
      { type: 'text', text: 'Calling echo.' },
      { type: 'tool_use', id: expect.stringMatching(/^toolu_[0-9A-Za-z]{24}$/), name: 'echo', input: { text: 'hi there' }, caller: { type: 'direct' } },
    ]);
    // Two words of text plus the input's 19 characters of JSON in 8-character chunks.
    expect(message.usage.output_tokens).toBe(2 + 3);
    const counted = await json(await post('/v1/messages/count_tokens', { model: body.model, tools: body.tools, messages: body.messages }));
    expect(message.usage.input_tokens).toBe(counted.input_tokens);
    // The tool definitions are part of the prompt.
    const withoutTools = await json(await post('/v1/messages/count_tokens', { model: body.model, messages: body.messages }));
    expect(counted.input_tokens).toBeGreaterThan(withoutTools.input_tokens);
  });

  it('calls the first offered tool mentioned, with {} when no JSON object follows its name', async () => {
    const message = await json(await post('/v1/messages', toolBody('use shell, or use clock {not json}, then use echo {"text":"x"}')));
    expect(message.stop_reason).toBe('tool_use');
    expect(message.content[1]).toMatchObject({ type: 'tool_use', name: 'clock', input: {} });
    const bare = await json(await post('/v1/messages', toolBody([{ type: 'text', text: 'now' }, { type: 'text', text: 'use clock' }])));
    expect(bare.content[1]).toMatchObject({ name: 'clock', input: {} });
  });

  it('never calls a tool the request did not offer: the reply is the plain echo', async () => {
    const unknown = await json(await post('/v1/messages', toolBody('use shell {"cmd":"id"}')));
    expect(unknown.stop_reason).toBe('end_turn');
    expect(unknown.content).toEqual([{ type: 'text', text: 'Echo: use shell {"cmd":"id"}' }]);
    const noTools = await json(await post('/v1/messages', toolBody(ASK_ECHO, { tools: undefined })));
    expect(noTools.stop_reason).toBe('end_turn');
    expect(noTools.content).toHaveLength(1);
    const typedOnly = await json(await post('/v1/messages', toolBody('use web_search', { tools: [{ type: 'web_search_20250305', name: 'web_search' }] })));
    expect(typedOnly.stop_reason).toBe('end_turn');
  });

  it('sends no partial tool call when the reply does not fit max_tokens: the text, cut, with stop_reason max_tokens', async () => {
    const message = await json(await post('/v1/messages', toolBody(ASK_ECHO, { max_tokens: 4 })));
    expect(message).toMatchObject({ stop_reason: 'max_tokens', content: [{ type: 'text', text: 'Calling echo.' }], usage: { output_tokens: 2 } });
  });

  it('streams the tool call as content_block_start, an empty then chunked input_json_delta, and stop_reason tool_use', async () => {
    const response = await post('/v1/messages', toolBody(ASK_ECHO, { stream: true }));
    const { text, outcome } = await readChunks(response);
    expect(outcome).toBe('done');
    const events = parseSse(text);
    expect(events.map((e) => e.event)).toEqual([
      'message_start',
      'content_block_start',
      'ping',
      'content_block_delta',
      'content_block_delta',
      'content_block_stop',
      'content_block_start',
      'content_block_delta',
      'content_block_delta',
      'content_block_delta',
      'content_block_delta',
      'content_block_stop',
      'message_delta',
      'message_stop',
    ]);
    const toolStart = events[6]!.data;
    expect(toolStart).toEqual({
      type: 'content_block_start',
      index: 1,
      content_block: { type: 'tool_use', id: expect.stringMatching(/^toolu_[0-9A-Za-z]{24}$/), name: 'echo', input: {}, caller: { type: 'direct' } },
    });
    const jsonDeltas = events.filter((e) => e.event === 'content_block_delta' && e.data.index === 1).map((e) => e.data.delta);
    expect(jsonDeltas.every((delta) => delta.type === 'input_json_delta')).toBe(true);
    expect(jsonDeltas[0].partial_json).toBe('');
    expect(JSON.parse(jsonDeltas.map((delta) => delta.partial_json).join(''))).toEqual({ text: 'hi there' });
    expect(events[11]!.data).toEqual({ type: 'content_block_stop', index: 1 });
    expect(events.at(-2)!.data).toEqual({ type: 'message_delta', delta: { stop_reason: 'tool_use', stop_sequence: null }, usage: { output_tokens: 5 } });
  });

  it('answers tool_result blocks with text naming each result, its content and (error)', async () => {
    const calls = ['toolu_01AAAAAAAAAAAAAAAAAAAAAAAA', 'toolu_01BBBBBBBBBBBBBBBBBBBBBBBB'];
    const results = [
      { type: 'tool_result', tool_use_id: calls[0], content: 'hi\nthere' },
      { type: 'tool_result', tool_use_id: calls[1], content: [{ type: 'text', text: 'boom' }, { type: 'text', text: 'again' }], is_error: true },
    ];
    const body = afterToolUse(results, calls);
    const message = await json(await post('/v1/messages', body));
    expect(message.stop_reason).toBe('end_turn');
    expect(message.content).toEqual([{ type: 'text', text: `Result of ${calls[0]}: hi there Result of ${calls[1]}: boom again (error)` }]);
    expect(message.usage.output_tokens).toBe(message.content[0].text.split(' ').length);
    const counted = await json(await post('/v1/messages/count_tokens', { model: body.model, tools: body.tools, messages: body.messages }));
    expect(message.usage.input_tokens).toBe(counted.input_tokens);

    const streamed = parseSse((await readChunks(await post('/v1/messages', { ...body, stream: true }))).text);
    expect(streamed.filter((e) => e.event === 'content_block_delta').map((e) => e.data.delta.text).join('')).toBe(message.content[0].text);
  });

  it.each([
    ['tools that are not a list', { tools: { name: 'echo' } }, 'tools: Input should be a valid list'],
    ['a tool without a name', { tools: [{ input_schema: { type: 'object' } }] }, 'tools.0.custom.name: Field required'],
    ['a tool name with a space', { tools: [CLOCK_TOOL, { ...ECHO_TOOL, name: 'echo text' }] }, "tools.1.custom.name: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'"],
    ['a 65-character tool name', { tools: [{ ...ECHO_TOOL, name: 'a'.repeat(65) }] }, "tools.0.custom.name: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'"],
    ['a tool without input_schema', { tools: [{ name: 'echo' }] }, 'tools.0.custom.input_schema: Field required'],
    ['an input_schema without type', { tools: [{ name: 'echo', input_schema: { properties: {} } }] }, 'tools.0.custom.input_schema.type: Field required'],
    ['an input_schema that is not an object schema', { tools: [{ name: 'echo', input_schema: { type: 'string' } }] }, "tools.0.custom.input_schema.type: Input should be 'object'"],
    ['two tools of one name', { tools: [ECHO_TOOL, ECHO_TOOL] }, 'tools: Tool names must be unique.'],
  ])('refuses %s with 400 invalid_request_error', async (_name, overrides, message) => {
    const response = await post('/v1/messages', messageBody(overrides));
    const body = await json(response);
    expectAnthropicError(response, body, 400, 'invalid_request_error');
    expect(body.error.message).toBe(message);
  });

  it('accepts a 64-character tool name and a typed tool without input_schema', async () => {
    const tools = [{ ...ECHO_TOOL, name: 'a'.repeat(64) }, { type: 'web_search_20250305', name: 'web_search', max_uses: 1 }];
    expect((await post('/v1/messages', messageBody({ tools }))).status).toBe(200);
  });

  it('refuses with 400 a tool_result whose tool_use_id the previous assistant message did not call', async () => {
    const stray = afterToolUse([{ type: 'tool_result', tool_use_id: 'toolu_01AAAAAAAAAAAAAAAAAAAAAAAA', content: 'ok' }, { type: 'tool_result', tool_use_id: 'toolu_01ZZZZZZZZZZZZZZZZZZZZZZZZ', content: 'x' }]);
    for (const path of ['/v1/messages', '/v1/messages/count_tokens']) {
      const response = await post(path, stray);
      const body = await json(response);
      expectAnthropicError(response, body, 400, 'invalid_request_error');
      expect(body.error.message).toBe(
        'messages.2.content.1: unexpected `tool_use_id` found in `tool_result` blocks: toolu_01ZZZZZZZZZZZZZZZZZZZZZZZZ. Each `tool_result` block must have a corresponding `tool_use` block in the previous message.',
      );
    }
    // A call made two turns back does not count: only the message immediately before.
    const earlier = messageBody({
      tools: [ECHO_TOOL],
      messages: [
        { role: 'user', content: 'use echo' },
        { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_01AAAAAAAAAAAAAAAAAAAAAAAA', name: 'echo', input: {} }] },
        { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_01AAAAAAAAAAAAAAAAAAAAAAAA', content: 'ok' }] },
        { role: 'assistant', content: 'done' },
        { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_01AAAAAAAAAAAAAAAAAAAAAAAA', content: 'again' }] },
      ],
    });
    const response = await post('/v1/messages', earlier);
    const body = await json(response);
    expectAnthropicError(response, body, 400, 'invalid_request_error');
    expect(body.error.message).toMatch(/^messages\.4\.content\.0: unexpected `tool_use_id`/);
  });

  it('refuses with 400 a tool_use the next message does not answer with a tool_result', async () => {
    const response = await post('/v1/messages', afterToolUse([{ type: 'text', text: 'never mind' }]));
    const body = await json(response);
    expectAnthropicError(response, body, 400, 'invalid_request_error');
    expect(body.error.message).toBe(
      'messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_01AAAAAAAAAAAAAAAAAAAAAAAA. Each `tool_use` block must have a corresponding `tool_result` block in the next message.',
    );
  });
});

describe('POST /v1/messages/count_tokens', () => {
  it('answers input_tokens equal to what /v1/messages bills', async () => {
    const body = messageBody({ system: 'be brief' });
    const counted = await post('/v1/messages/count_tokens', { model: body.model, system: body.system, messages: body.messages });
    expect(counted.status).toBe(200);
    const { input_tokens } = await json(counted);
    const billed = await json(await post('/v1/messages', body));
    expect(input_tokens).toBe(billed.usage.input_tokens);
  });

  it('requires authentication', async () => {
    const response = await post('/v1/messages/count_tokens', { model: 'm', messages: [{ role: 'user', content: 'a' }] }, { 'anthropic-version': VERSION });
    expectAnthropicError(response, await json(response), 401, 'authentication_error');
  });
});

describe('models and unknown paths', () => {
  it('lists models newest first in the documented page shape', async () => {
    const response = await fetch(`${standIn.url}/v1/models`, { headers: apiHeaders() });
    expect(response.status).toBe(200);
    const body = await json(response);
    expect(body.data.length).toBeGreaterThanOrEqual(2);
    for (const model of body.data) expect(model).toEqual({ type: 'model', id: expect.any(String), display_name: expect.any(String), created_at: expect.stringMatching(/Z$/) });
    expect(body).toMatchObject({ has_more: false, first_id: body.data[0].id, last_id: body.data.at(-1).id });
    const page = await json(await fetch(`${standIn.url}/v1/models?limit=1`, { headers: apiHeaders() }));
    expect(page).toMatchObject({ data: [body.data[0]], has_more: true });
  });

  it('gets one model by id and answers 404 not_found_error for an unknown one', async () => {
    const list = await json(await fetch(`${standIn.url}/v1/models`, { headers: apiHeaders() }));
    const one = await fetch(`${standIn.url}/v1/models/${list.data[0].id}`, { headers: apiHeaders() });
    expect(await json(one)).toEqual(list.data[0]);
    const missing = await fetch(`${standIn.url}/v1/models/claude-nonexistent`, { headers: apiHeaders() });
    expectAnthropicError(missing, await json(missing), 404, 'not_found_error');
  });

  it('answers 404 not_found_error for any other path', async () => {
    const response = await fetch(`${standIn.url}/v1/complete-nonsense`, { headers: apiHeaders() });
    expectAnthropicError(response, await json(response), 404, 'not_found_error');
  });
});

describe('OAuth refresh grant', () => {
  function refresh(refreshToken: string, as: 'form' | 'json' = 'form'): Promise<Response> {
    const fields = { grant_type: 'refresh_token', refresh_token: refreshToken, client_id: 'test-client' };
    return as === 'form'
      ? fetch(standIn.url + OAUTH_TOKEN_PATH, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(fields).toString() })
      : fetch(standIn.url + OAUTH_TOKEN_PATH, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(fields) });
  }

  it('rotates: a refresh issues a working access token and a new refresh token, and the old one stops working', async () => {
    standIn.refreshTokens.add('rt-original');
    const served = standIn.tokenRequests;
    const response = await refresh('rt-original');
    expect(response.status).toBe(200);
    const tokens = await json(response);
    expect(tokens).toEqual({ token_type: 'Bearer', access_token: expect.any(String), refresh_token: expect.any(String), expires_in: 3600, scope: expect.any(String) });
    expect(standIn.tokenRequests).toBe(served + 1);
    expect(standIn.refreshTokens.has('rt-original')).toBe(false);
    expect(standIn.refreshTokens.has(tokens.refresh_token)).toBe(true);

    const call = await post('/v1/messages', messageBody(), { 'anthropic-version': VERSION, authorization: `Bearer ${tokens.access_token}`, 'anthropic-beta': OAUTH_BETA });
    expect(call.status).toBe(200);

    const reused = await refresh('rt-original', 'json');
    expect(reused.status).toBe(400);
    expect(await json(reused)).toEqual({ error: 'invalid_grant', error_description: expect.any(String) });
    expect(standIn.tokenRequests).toBe(served + 1);

    const next = await refresh(tokens.refresh_token, 'json');
    expect(next.status).toBe(200);
  });

  it('issues access tokens that expire after accessTokenLifetimeSeconds', async () => {
    standIn.refreshTokens.add('rt-short');
    standIn.accessTokenLifetimeSeconds = 0;
    const tokens = await json(await refresh('rt-short'));
    expect(tokens.expires_in).toBe(0);
    const call = await post('/v1/messages', messageBody(), { 'anthropic-version': VERSION, authorization: `Bearer ${tokens.access_token}`, 'anthropic-beta': OAUTH_BETA });
    const body = await json(call);
    expectAnthropicError(call, body, 401, 'authentication_error');
    expect(body.error.message).toMatch(/expired/);
  });

  it('refuses an unsupported grant type with 400', async () => {
    const response = await fetch(standIn.url + OAUTH_TOKEN_PATH, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ grant_type: 'password' }) });
    expect(response.status).toBe(400);
    expect((await json(response)).error).toBe('unsupported_grant_type');
  });
});

describe('faults', () => {
  it('status: answers the injected Anthropic error for `times` requests, then clears', async () => {
    standIn.fault = { kind: 'status', status: 529, type: 'overloaded_error', times: 2 };
    for (let i = 0; i < 2; i++) {
      const response = await post('/v1/messages', messageBody());
      const body = await json(response);
      expectAnthropicError(response, body, 529, 'overloaded_error');
      expect(body.error.message).toBe('Overloaded');
    }
    expect(standIn.fault).toBeUndefined();
    expect((await post('/v1/messages', messageBody())).status).toBe(200);
  });

  it('status: a 429 rate_limit_error carries retry-after', async () => {
    standIn.fault = { kind: 'status', status: 429, type: 'rate_limit_error', message: 'slow down', retryAfterSeconds: 7 };
    const response = await post('/v1/messages', messageBody({ stream: true }));
    const body = await json(response);
    expectAnthropicError(response, body, 429, 'rate_limit_error');
    expect(body.error.message).toBe('slow down');
    expect(response.headers.get('retry-after')).toBe('7');
  });

  it('faults do not touch other endpoints and are not spent by them', async () => {
    standIn.fault = { kind: 'status', status: 500, type: 'api_error' };
    expect((await fetch(`${standIn.url}/v1/models`, { headers: apiHeaders() })).status).toBe(200);
    expect((await post('/v1/messages/count_tokens', { model: 'm', messages: [{ role: 'user', content: 'a' }] })).status).toBe(200);
    expect(standIn.fault).toBeDefined();
    expect((await post('/v1/messages', messageBody())).status).toBe(500);
  });

  it('delay-headers: waits before sending the response headers', async () => {
    standIn.fault = { kind: 'delay-headers', ms: 200 };
    const started = Date.now();
    const response = await post('/v1/messages', messageBody());
    expect(Date.now() - started).toBeGreaterThanOrEqual(190);
    expect(response.status).toBe(200);
    const again = Date.now();
    await post('/v1/messages', messageBody());
    expect(Date.now() - again).toBeLessThan(150);
  });

  it('stall-stream: sends N events, then goes silent with the socket open', async () => {
    standIn.fault = { kind: 'stall-stream', afterEvents: 3 };
    const aborted = standIn.abortedStreams;
    const response = await post('/v1/messages', messageBody({ stream: true }));
    const { text, outcome } = await readChunks(response, 300);
    expect(outcome).toBe('silent');
    expect(parseSse(text).map((e) => e.event)).toEqual(['message_start', 'content_block_start', 'ping']);
    // Giving up on the stalled stream is a client abort the stand-in sees.
    await until(() => standIn.abortedStreams === aborted + 1);
  });

  it('stall-stream: does not apply to, nor get spent by, a non-streaming request', async () => {
    standIn.fault = { kind: 'stall-stream', afterEvents: 0 };
    expect((await post('/v1/messages', messageBody())).status).toBe(200);
    expect(standIn.fault).toBeDefined();
  });

  it('reset-stream: sends N events, then destroys the socket mid-body', async () => {
    standIn.fault = { kind: 'reset-stream', afterEvents: 4 };
    const aborted = standIn.abortedStreams;
    const response = await post('/v1/messages', messageBody({ stream: true }));
    expect(response.status).toBe(200);
    const { text, outcome } = await readChunks(response);
    expect(outcome).toBe('error');
    expect(parseSse(text).map((e) => e.event)).toEqual(['message_start', 'content_block_start', 'ping', 'content_block_delta']);
    expect(standIn.abortedStreams).toBe(aborted);
    expect((await post('/v1/messages', messageBody({ stream: true }))).status).toBe(200);
  });

  it('reset-body: sends the start of a JSON answer under its full Content-Length, then destroys the socket', async () => {
    standIn.fault = { kind: 'reset-body', afterBytes: 20 };
    const response = await post('/v1/messages', messageBody());
    expect(response.status).toBe(200);
    expect(Number(response.headers.get('content-length'))).toBeGreaterThan(20);
    const { text, outcome } = await readChunks(response);
    expect(outcome).toBe('error');
    expect(text).toHaveLength(20);
    expect((await post('/v1/messages', messageBody())).status).toBe(200);
  });

  it('stall-body: sends the start of a JSON answer, then nothing, with the socket open', async () => {
    standIn.fault = { kind: 'stall-body', afterBytes: 20 };
    const { text, outcome } = await readChunks(await post('/v1/messages', messageBody()), 300);
    expect(outcome).toBe('silent');
    expect(text).toHaveLength(20);
  });

  it('refuse-oauth: answers 400 invalid_grant without spending the refresh token', async () => {
    standIn.refreshTokens.add('rt-keep');
    standIn.fault = { kind: 'refuse-oauth' };
    const body = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: 'rt-keep' }).toString();
    const init = { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body };
    const refused = await fetch(standIn.url + OAUTH_TOKEN_PATH, init);
    expect(refused.status).toBe(400);
    expect((await json(refused)).error).toBe('invalid_grant');
    expect(standIn.refreshTokens.has('rt-keep')).toBe(true);
    expect((await fetch(standIn.url + OAUTH_TOKEN_PATH, init)).status).toBe(200);
  });
});

describe('the official SDK against the stand-in', () => {
  it('reads messages, streams, token counts, models and typed errors', async () => {
    const client = new Anthropic({ apiKey: API_KEY, authToken: null, baseURL: standIn.url, maxRetries: 0 });
    const params = { model: 'claude-sonnet-4-5-20250929', max_tokens: 50, messages: [{ role: 'user' as const, content: 'hello there friend' }] };
    const message = await client.messages.create(params);
    expect(message.content).toEqual([{ type: 'text', text: 'Echo: hello there friend' }]);
    const streamed = await client.messages.stream(params).finalMessage();
    expect(streamed.content).toMatchObject(message.content);
    expect(streamed.usage).toMatchObject({ input_tokens: message.usage.input_tokens, output_tokens: message.usage.output_tokens });
    expect((await client.messages.countTokens({ model: params.model, messages: params.messages })).input_tokens).toBe(message.usage.input_tokens);
    const models: string[] = [];
    for await (const model of client.models.list({ limit: 1 })) models.push(model.id);
    expect(models.length).toBeGreaterThanOrEqual(2);

    standIn.fault = { kind: 'status', status: 529, type: 'overloaded_error' };
    const failure = await client.messages.create(params).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(Anthropic.APIError);
    expect(failure).toMatchObject({ status: 529, requestID: expect.stringMatching(/^req_/) });
  });

  it('runs a tool loop: the streamed tool call reassembles into the same tool_use block, and the result reaches the model', async () => {
    const client = new Anthropic({ apiKey: API_KEY, authToken: null, baseURL: standIn.url, maxRetries: 0 });
    const tools = [{ name: 'echo', description: 'Echoes its text', input_schema: { type: 'object' as const, properties: { text: { type: 'string' } } } }];
    const params = { model: 'claude-sonnet-4-5-20250929', max_tokens: 100, tools, messages: [{ role: 'user' as const, content: 'use echo {"text":"hi ✓ 🌍 there"}' }] };
    const message = await client.messages.create(params);
    expect(message.stop_reason).toBe('tool_use');
    const streamed = await client.messages.stream(params).finalMessage();
    expect(streamed.stop_reason).toBe('tool_use');
    expect(streamed.content).toEqual(message.content.map((block) => (block.type === 'tool_use' ? { ...block, id: expect.stringMatching(/^toolu_/) } : block)));
    expect(streamed.content[1]).toMatchObject({ type: 'tool_use', name: 'echo', input: { text: 'hi ✓ 🌍 there' } });
    expect(streamed.usage).toMatchObject({ input_tokens: message.usage.input_tokens, output_tokens: message.usage.output_tokens });

    const call = streamed.content.find((block) => block.type === 'tool_use')!;
    const answer = await client.messages.create({
      ...params,
      messages: [...params.messages, { role: 'assistant', content: streamed.content }, { role: 'user', content: [{ type: 'tool_result', tool_use_id: call.id, content: 'hi there' }] }],
    });
    expect(answer.stop_reason).toBe('end_turn');
    expect(answer.content).toEqual([{ type: 'text', text: `Result of ${call.id}: hi there` }]);
  });
});

describe('lifecycle', () => {
  it('answers 413 request_too_large for a body above maxBodyBytes', async () => {
    const small = await startAnthropicStandIn({ maxBodyBytes: 1024 });
    try {
      small.apiKeys.add(API_KEY);
      const response = await fetch(`${small.url}/v1/messages`, { method: 'POST', headers: apiHeaders(), body: JSON.stringify(messageBody({ system: 'x'.repeat(2048) })) });
      expectAnthropicError(response, await json(response), 413, 'request_too_large');
    } finally {
      await small.close();
    }
  });

  it('closes promptly even with a stalled stream open, and listens only on 127.0.0.1', async () => {
    const own = await startAnthropicStandIn();
    expect(own.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    own.apiKeys.add(API_KEY);
    own.fault = { kind: 'stall-stream', afterEvents: 1 };
    const response = await fetch(`${own.url}/v1/messages`, { method: 'POST', headers: apiHeaders(), body: JSON.stringify(messageBody({ stream: true })) });
    const reader = response.body!.getReader();
    await reader.read();
    const started = Date.now();
    await own.close();
    expect(Date.now() - started).toBeLessThan(1000);
    expect(own.abortedStreams).toBe(0);
    await expect(reader.read()).rejects.toThrow();
  });
});
