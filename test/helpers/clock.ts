/**
 * Per-minute limits count in windows aligned to the clock minute (src/proxy/limits.ts): a test
 * that makes several calls and expects the last one refused fails if a minute ends between
 * them. It waits for a new minute when fewer than `marginMs` are left of this one.
 */
import { setTimeout as sleep } from 'node:timers/promises';

export async function awayFromMinuteBoundary(marginMs = 5_000): Promise<void> {
  const left = 60_000 - (Date.now() % 60_000);
  if (left < marginMs) await sleep(left + 50);
}
