// The REST half of the contract: start a session, load one with its history.

import { isSessionView, type SessionView } from "./protocol";

/** The session expired or never existed (`/refresh_token` answered 400). */
export class SessionGone extends Error {
  constructor() {
    super("This session has expired or does not exist.");
    this.name = "SessionGone";
  }
}

/** The server answered with an error; `detail` is its `{"detail": ...}`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly detail: string,
  ) {
    super(detail);
    this.name = "ApiError";
  }
}

/** The server could not be reached (network down, server stopped). */
export class Unreachable extends Error {
  constructor(cause: unknown) {
    super("The Parley server cannot be reached.", { cause });
    this.name = "Unreachable";
  }
}

export interface Api {
  createSession(name: string): Promise<SessionView>;
  /** @throws SessionGone, Unreachable, ApiError */
  refreshSession(token: string): Promise<SessionView>;
}

/** The API of the server at `base` ("" for the page's own origin). */
export function httpApi(base = ""): Api {
  async function call(method: string, path: string, params: Record<string, string>) {
    const url = `${base}${path}?${new URLSearchParams(params).toString()}`;
    let response: Response;
    try {
      response = await fetch(url, { method, headers: { Accept: "application/json" } });
    } catch (e) {
      throw new Unreachable(e);
    }
    let body: unknown = null;
    try {
      body = await response.json();
    } catch {
      // not JSON: reported below with the status
    }
    if (response.ok && isSessionView(body)) return body;
    const detail = detailOf(body) ?? `HTTP ${response.status}`;
    if (response.status >= 502 && response.status <= 504) throw new Unreachable(detail);
    throw new ApiError(response.status, detail);
  }

  return {
    createSession: (name) => call("POST", "/token", { name }),
    async refreshSession(token) {
      try {
        return await call("GET", "/refresh_token", { token });
      } catch (e) {
        if (e instanceof ApiError && e.status === 400) throw new SessionGone();
        throw e;
      }
    },
  };
}

/** A FastAPI error body's detail as one sentence (422s carry a list). */
function detailOf(body: unknown): string | null {
  if (typeof body !== "object" || body === null || !("detail" in body)) return null;
  const detail = body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((d: unknown) =>
        typeof d === "object" && d !== null && "msg" in d ? String(d.msg) : JSON.stringify(d),
      )
      .join("; ");
  }
  return null;
}

/** The WebSocket URL of the page's own server. */
export function pageSocketBase(): string {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}`;
}
