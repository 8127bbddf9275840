/** Reading server-sent events off a fetch response in tests. */
import { createParser } from 'eventsource-parser';

export interface SseEvent {
  id: string | undefined;
  event: string | undefined;
  data: string;
}

/**
 * The events of `response` until `stop` says it has enough, the stream ends, or `timeoutMs`
 * passes (a stream that stays open must not hang the test); the stream is cancelled after.
 */
export async function readSse(response: Response, stop: (events: SseEvent[]) => boolean = () => false, timeoutMs = 5_000): Promise<SseEvent[]> {
  const events: SseEvent[] = [];
  const parser = createParser({ onEvent: (e) => events.push({ id: e.id, event: e.event, data: e.data }) });
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  const deadline = setTimeout(() => void reader.cancel(), timeoutMs);
  try {
    while (!stop(events)) {
      const { done, value } = await reader.read();
      if (done) break;
      parser.feed(decoder.decode(value, { stream: true }));
    }
  } finally {
    clearTimeout(deadline);
    await reader.cancel().catch(() => {});
  }
  return events;
}
