// A person's ID token, for servers that sign people in with an identity provider
// (`OIDC_ISSUER`). Parley does no sign-in of its own: the page that embeds it does, and
// sets `window.parleyIdToken` to a function giving the signed-in person's current ID
// token (a JWT; or a promise of it), or null when nobody is signed in. Set it from a
// script of the page's own origin loaded before Parley's (the Content-Security-Policy
// allows no inline script), e.g. with your sign-in library:
//
//   window.parleyIdToken = () => auth.getIdToken();
//
// Parley calls it before each request that names the person and before each socket,
// so a library that renews tokens hands out fresh ones. The person's conversations are
// then listed on every device; no owner token is made or kept. The token goes in
// `Authorization: Bearer` and in the socket's subprotocols, never in a URL, and Parley
// never stores it.

/** What the page sets as `window.parleyIdToken`. */
export type IdTokenSource = () => string | null | Promise<string | null>;

declare global {
  interface Window {
    parleyIdToken?: IdTokenSource;
  }
}

/** The owner of the signed-in person: requests for it carry the page's ID token. */
export const PERSON = "person";

/** The subprotocol the server answers with. */
export const SUBPROTOCOL = "parley";
/** The subprotocol that carries an ID token (`protocol/subprotocols.py`). */
export const BEARER_PREFIX = "parley.bearer.";

/** Nobody is signed in: the page's hook gave no token. */
export class NotSignedIn extends Error {
  constructor() {
    super("Sign in to see and start your conversations.");
    this.name = "NotSignedIn";
  }
}

/** The page's hook, if it set one (`scope`: where to look, the page by default). */
export function idTokenHook(scope: object = globalThis): IdTokenSource | null {
  const hook = (scope as { parleyIdToken?: unknown }).parleyIdToken;
  return typeof hook === "function" ? (hook as IdTokenSource) : null;
}

/** The person's ID token now, from `hook`; null without a hook, or when it gives none or fails. */
export async function pageIdToken(hook: IdTokenSource | null = idTokenHook()): Promise<string | null> {
  if (hook === null) return null;
  try {
    const token = await hook();
    return typeof token === "string" && token !== "" ? token : null;
  } catch (e) {
    console.warn("window.parleyIdToken failed:", e instanceof Error ? e.name : typeof e);
    return null;
  }
}

/** The subprotocols a socket offers to prove the person of `idToken` (none without one). */
export function socketProtocols(idToken: string | null): string[] | undefined {
  return idToken === null ? undefined : [SUBPROTOCOL, BEARER_PREFIX + idToken];
}
