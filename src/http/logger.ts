/**
 * The one JSON logger Bulwark writes through, built so that no line can carry a secret
 * (STYLE.md §14). Masking happens at every stage pino offers:
 *
 * 1. `hooks.logMethod` masks the message string and interpolation arguments;
 * 2. `formatters.log` masks the merged object; `formatters.bindings` and a wrapped `child`
 *    mask the base fields and child bindings;
 * 3. the `err` serializer masks an error's message and stack;
 * 4. `redact` blanks the credential headers at their usual paths;
 * 5. `hooks.streamWrite` masks the finished line, which catches what the earlier stages
 *    cannot see: a secret split across a format string and its argument, the message pino
 *    takes from an error, and the output of serializers added later.
 */
import pino from 'pino';

import { mayContainSecret, maskDeep, maskSecrets } from '../audit/mask.js';

export type Logger = pino.Logger;

export interface LoggerOptions {
  /** pino level name; defaults to `info`. */
  level?: string;
  /** Where lines go; defaults to stdout. */
  destination?: pino.DestinationStream;
  /** Fields on every line. Defaults to none: no pid or hostname. */
  base?: Record<string, unknown>;
}

const REDACT_CENSOR = '****';

const REDACTED_PATHS = [
  'req.headers.authorization',
  'req.headers["x-api-key"]',
  'req.headers["proxy-authorization"]',
  'req.headers.cookie',
  'res.headers["set-cookie"]',
  'headers.authorization',
  'headers["x-api-key"]',
  'headers["proxy-authorization"]',
  'headers.cookie',
  'headers["set-cookie"]',
];

export function createLogger(options: LoggerOptions = {}): Logger {
  const { level = 'info', destination, base = {} } = options;

  const loggerOptions: pino.LoggerOptions = {
    level,
    base,
    redact: { paths: REDACTED_PATHS, censor: REDACT_CENSOR },
    serializers: { err: serializeError },
    formatters: {
      bindings: (bindings) => maskDeep(bindings),
      log: (object) => maskDeep(object),
    },
    hooks: {
      logMethod(args, method) {
        method.apply(this, maskLogArguments(args) as Parameters<pino.LogFn>);
      },
      streamWrite: maskLogLine,
    },
  };
  const logger = destination ? pino(loggerOptions, destination) : pino(loggerOptions);

  // pino runs `formatters.bindings` on `base` only, never on a child's bindings, so children
  // mask theirs here. Children inherit this method, so grandchildren are covered too.
  const createChild = logger.child;
  logger.child = function maskedChild(this: Logger, bindings, childOptions) {
    return createChild.call(this, maskDeep(bindings), childOptions);
  } as Logger['child'];
  return logger;
}

/** By the time serializers run, `formatters.log` has already turned an Error into a plain object. */
function serializeError(error: unknown): unknown {
  return maskDeep(error);
}

function maskLogArguments(args: readonly unknown[]): unknown[] {
  // The first argument, when an object, is the merging object: `formatters.log` masks it, and
  // pino must still see an Error there to pick its message.
  const masked = args.map((arg, index) =>
    typeof arg === 'string' ? maskSecrets(arg) : index === 0 ? arg : maskDeep(arg),
  );
  const first = args[0];
  if (args.length === 1 && typeof first === 'object' && first !== null) {
    // Without a message pino uses the error's own message, which has not been masked yet.
    const errorMessage = first instanceof Error ? first.message : messageOfErrField(first);
    if (errorMessage !== undefined) masked.push(maskSecrets(errorMessage));
  }
  return masked;
}

function messageOfErrField(object: object): string | undefined {
  const record = object as { msg?: unknown; err?: { message?: unknown } | null };
  if (record.msg !== undefined) return undefined;
  const message = record.err?.message;
  return typeof message === 'string' ? message : undefined;
}

/**
 * The last line of defence: parse the finished JSON line and mask it structurally, so every
 * string value (including `msg`) is masked in its unescaped form and the output stays valid
 * JSON. A line that is not JSON (a custom stream format) is masked as text.
 */
function maskLogLine(line: string): string {
  if (!mayContainSecret(line)) return line;
  try {
    return `${JSON.stringify(maskDeep(JSON.parse(line) as unknown))}\n`;
  } catch {
    return maskSecrets(line);
  }
}
