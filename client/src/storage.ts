// Where the page keeps its session between visits: the token in the URL (so a link or
// a reload returns to the conversation) and in localStorage (so opening the bare URL
// again does too), and the name (to offer it for the next session). A token in the URL
// that is not the stored one is never taken silently: the page asks first (App.tsx).
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

/** The token in the page's URL (a link, a bookmark, a reload), if any. */
export function linkedToken(): string | null {
  return new URLSearchParams(window.location.search).get("token");
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
  const url = new URL(window.location.href);
  url.searchParams.set("token", token);
  window.history.replaceState(null, "", url);
}

/** Forget the current session (it expired); the name stays. */
export function forgetSession(): void {
  storage()?.removeItem(TOKEN_KEY);
  const url = new URL(window.location.href);
  url.searchParams.delete("token");
  window.history.replaceState(null, "", url);
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
