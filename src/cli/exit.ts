/**
 * The CLI's exit codes (documented in the README) and the error that carries one. Codes above
 * 63 follow sysexits.h so scripts and service managers read them the usual way.
 */
import type { Result } from '../auth/key-service.js';

export const EXIT = {
  ok: 0,
  /** A check ran and found a problem: audit chain broken, doctor findings. */
  checkFailed: 1,
  /** Bad arguments or input. */
  usage: 2,
  notFound: 3,
  /** The change conflicts with the current state, or the caller may not make it. */
  conflict: 4,
  /** The database or the running server could not be reached (EX_UNAVAILABLE). */
  unavailable: 69,
  /** A bug (EX_SOFTWARE). */
  internal: 70,
  /** The configuration is refused (EX_CONFIG). */
  config: 78,
} as const;

export class CliError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode: number) {
    super(message);
    this.name = 'CliError';
    this.exitCode = exitCode;
  }
}

const FAILURE_EXIT = { not_found: EXIT.notFound, validation_failed: EXIT.usage, conflict: EXIT.conflict, forbidden: EXIT.conflict } as const;

/** The value of a result, or the CliError with the exit code its failure means. */
export function unwrap<T>(result: Result<T>): T {
  if (!result.ok) throw new CliError(result.message, FAILURE_EXIT[result.code]);
  return result.value;
}
