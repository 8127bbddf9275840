/**
 * The typed context every Bulwark route and middleware shares: what earlier steps of the
 * pipeline leave for later ones. Services are injected here, never imported by routes.
 */
import type { Principal } from '../auth/principal.js';
import type { Logger } from './logger.js';

export interface BulwarkVariables {
  requestId: string;
  logger: Logger;
  /** Set by `authenticate`; absent on public routes. */
  principal: Principal;
  /** Whether the request presented any credential (for audit of failures). */
  credentialPresented: boolean;
  /** The status of a response written straight to the socket (the proxy's fast path). */
  sentStatus: number | undefined;
  /** Set on `/v1/*`: errors are written in Anthropic's shape instead of Bulwark's envelope. */
  errorFormat: 'anthropic' | undefined;
}

export interface BulwarkEnv {
  Variables: BulwarkVariables;
}
