/**
 * The typed context every Bulwark route and middleware shares: what earlier steps of the
 * pipeline leave for later ones. Services are injected here, never imported by routes.
 */
import type { Principal } from '../auth/principal.js';
import type { AuthMethod, SessionContext } from './routes/login.js';

export interface BulwarkVariables {
  requestId: string;
  /** Set by `authenticate`; absent on public routes. */
  principal: Principal;
  /** Whether the request presented any credential (for audit of failures). */
  credentialPresented: boolean;
  /** The status of a response written straight to the socket (the proxy's fast path). */
  sentStatus: number | undefined;
  /** Set on `/v1/*`: errors are written in Anthropic's shape instead of Bulwark's envelope. */
  errorFormat: 'anthropic' | undefined;
  /** The client's address: the socket's, or from a trusted proxy's forwarding headers. */
  clientIp: string | undefined;
  /** The most bytes this request's body may have, chosen by path. */
  bodyLimit: number;
  /** How the principal was established: a header credential, or the admin listener's cookie session. */
  authMethod: AuthMethod | undefined;
  /** The cookie session behind the principal, when `authMethod` is `session`. */
  session: SessionContext | undefined;
}

export interface BulwarkEnv {
  Variables: BulwarkVariables;
}
