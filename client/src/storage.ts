// Where the page keeps its session between visits: the token in the URL's fragment
// (`/#token=...`, so a link or a reload returns to the conversation) and in localStorage
// (so opening the bare URL again does too), and the name (to offer it for the next
// session). The fragment is never sent to a server, so the token stays out of access
// logs; an older `?token=` link still opens, and moves to the fragment. A token in the
// URL that is not the stored one is never taken silently: the page asks first (App.tsx).
// The owner token, which lists the person's conversations, is kept in localStorage
// only: never in the URL, so it is in no link, bookmark or server log.

const TOKEN_KEY = "parley.token";
const NAME_KEY = "parley.name";
const OWNER_KEY = "parley.owner";

function storage(): Storage | null {
  try {
    return window.localStorage;
  } catch {
    return null; // storage disabled: the URL alone keeps the session
  }
}

/** The token in the page's URL (a link, a bookmark, a reload), if any: in its fragment,
 * or in the query of an older link. */
export function linkedToken(): string | null {
  const fragment = new URLSearchParams(window.location.hash.slice(1)).get("token");
  return fragment ?? new URLSearchParams(window.location.search).get("token");
}

/** `url` with its session token set in the fragment (or removed, for null), and none in
 * its query. */
function withToken(token: string | null): URL {
  const url = new URL(window.location.href);
  url.searchParams.delete("token");
  const fragment = new URLSearchParams(url.hash.slice(1));
  if (token === null) fragment.delete("token");
  else fragment.set("token", token);
  url.hash = fragment.toString();
  return url;
}

/** The token of the session this browser keeps, if any. */
export function storedToken(): string | null {
  return storage()?.getItem(TOKEN_KEY) ?? null;
}

/** The name of the session this browser keeps, if any. */
export const storedName = (): string | null =>
  storedToken() === null ? null : (storage()?.getItem(NAME_KEY) ?? null);

export const savedName = (): string => storage()?.getItem(NAME_KEY) ?? "";

/** Remember `token` (URL and storage) as the current session of `name`. */
export function saveSession(token: string, name: string): void {
  storage()?.setItem(TOKEN_KEY, token);
  storage()?.setItem(NAME_KEY, name);
  window.history.replaceState(null, "", withToken(token));
}

/** Forget the current session (it expired); the name stays. */
export function forgetSession(): void {
  storage()?.removeItem(TOKEN_KEY);
  window.history.replaceState(null, "", withToken(null));
}

/** The owner token of this browser's conversation list, if it has one. */
export const storedOwner = (): string | null => storage()?.getItem(OWNER_KEY) ?? null;

export function saveOwner(owner: string): void {
  storage()?.setItem(OWNER_KEY, owner);
}

/** Forget the owner token (it expired: its list is gone). */
export function forgetOwner(): void {
  storage()?.removeItem(OWNER_KEY);
}
