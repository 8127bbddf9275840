/**
 * Parsing an untrusted JSON body (RFC 8259). Before `JSON.parse` runs, one linear scan counts
 * nesting, so a body of a million `[` is refused in O(n) instead of reaching code that walks
 * the result recursively (schema validation, masking, logging) and overflowing its stack.
 * RFC 8259 §9 lets a parser limit nesting depth; 64 is far beyond any API body Bulwark takes.
 */
import { ApiError } from '../http/errors.js';

export const DEFAULT_MAX_JSON_DEPTH = 64;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;

/**
 * Whether objects and arrays in `text` nest deeper than `limit`; stops at the first level past
 * it. Brackets inside strings do not count; a backslash escapes the next character (RFC 8259
 * §7), so `"\""` does not end a string. Malformed text is not judged here: JSON.parse does.
 */
export function jsonDepthExceeds(text: string, limit: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (inString) {
      if (code === BACKSLASH) i++;
      else if (code === QUOTE) inString = false;
    } else if (code === QUOTE) {
      inString = true;
    } else if (code === OPEN_BRACE || code === OPEN_BRACKET) {
      if (++depth > limit) return true;
    } else if (code === CLOSE_BRACE || code === CLOSE_BRACKET) {
      depth--;
    }
  }
  return false;
}

/** The parsed body, or `invalid_json` (400) for text that is not JSON or nests past `maxDepth`. */
export function parseJsonBody(text: string, maxDepth: number = DEFAULT_MAX_JSON_DEPTH): unknown {
  if (!Number.isSafeInteger(maxDepth) || maxDepth < 1) throw new Error(`parseJsonBody: maxDepth must be a positive integer, not ${String(maxDepth)}`);
  if (jsonDepthExceeds(text, maxDepth)) {
    throw new ApiError('invalid_json', `The request body nests deeper than ${maxDepth} levels.`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new ApiError('invalid_json', 'The request body is not valid JSON.');
  }
}
