/**
 * Who is calling. Every authenticated request carries exactly one principal; its tenant is
 * decided by the credential, never by anything else the client sends.
 */

export type PrincipalKind =
  /** A key from the store. */
  | 'key'
  /** The single key from BULWARK_API_KEY. */
  | 'bootstrap'
  /** The running server's admin token or BULWARK_ADMIN_KEY: an operator, across tenants. */
  | 'operator'
  /** Development with BULWARK_AUTH=off on loopback: nobody was asked who they are. */
  | 'anonymous'
  /** A short-lived token from POST /auth/token, standing for the store key that minted it. */
  | 'jwt'
  /** An access token from the operators' own identity provider (`oidc` settings). */
  | 'oidc';

export interface Principal {
  kind: PrincipalKind;
  tenant: string;
  keyId: string;
  keyName: string;
  scopes: readonly string[];
  expiresAt: Date | null;
  /** The key's own limits (validated where they are enforced); absent for keys without any. */
  limits?: Readonly<Record<string, unknown>> | undefined;
  /** CIDRs the key may be used from; absent or empty means anywhere. */
  allowedCidrs?: readonly string[] | undefined;
}

export const DEFAULT_TENANT = 'default';

/** Operators and the bootstrap key manage every tenant; store keys only their own. */
export function crossesTenants(principal: Principal): boolean {
  return principal.kind === 'operator' || principal.kind === 'bootstrap' || principal.kind === 'anonymous';
}

/** The principal's public description (what `/api/whoami` returns). */
export function describePrincipal(principal: Principal) {
  return {
    kind: principal.kind,
    tenant: principal.tenant,
    keyId: principal.keyId,
    keyName: principal.keyName,
    scopes: [...principal.scopes],
    expiresAt: principal.expiresAt ? principal.expiresAt.toISOString() : null,
  };
}
