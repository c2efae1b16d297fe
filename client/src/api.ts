// The REST half of the contract: sessions (start, load, rename, change model and system
// prompt, delete, export), the models on offer, and the owner that lists a person's
// conversations: an owner token, or `PERSON`, the signed-in person whose ID token the
// page gives (identity.ts). Tokens travel as `Authorization: Bearer`, never in a URL.

import { NotSignedIn, pageIdToken, PERSON } from "./identity";
import {
  isConversationPage,
  isModelList,
  isOwnerView,
  isSessionView,
  type ConversationPage,
  type ExportFormat,
  type ModelInfo,
  type SessionChoice,
  type SessionView,
} from "./protocol";

/** The session expired or never existed (the server answered 400 for its token). */
export class SessionGone extends Error {
  constructor() {
    super("This session has expired or does not exist.");
    this.name = "SessionGone";
  }
}

/** The owner token expired or never existed: its conversation list is gone. */
export class OwnerGone extends Error {
  constructor() {
    super("Your conversation list has expired.");
    this.name = "OwnerGone";
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

/** The model was not changed: messages of the session still wait for their replies (409). */
export class ReplyInProgress extends Error {
  constructor() {
    super(
      "A reply is still being written, so nothing was changed. Wait for it to finish, then change the model.",
    );
    this.name = "ReplyInProgress";
  }
}

/** The server could not be reached (network down, server stopped). */
export class Unreachable extends Error {
  constructor(cause: unknown) {
    super("The Parley server cannot be reached.", { cause });
    this.name = "Unreachable";
  }
}

/** A conversation exported as a file. */
export interface ExportedFile {
  blob: Blob;
  format: ExportFormat;
}

export interface Api {
  /**
   * Start a session, one of `owner`'s conversations when given, with the model and
   * system prompt of `choice` (the defaults for what it leaves out).
   * @throws OwnerGone, ApiError (an unknown model, a system prompt refused)
   */
  createSession(name: string, owner?: string | null, choice?: SessionChoice): Promise<SessionView>;
  /** The models a session may choose, the default first. */
  listModels(): Promise<ModelInfo[]>;
  /** @throws SessionGone, Unreachable, ApiError */
  refreshSession(token: string): Promise<SessionView>;
  /** A new owner token (`POST /owner`). */
  createOwner(): Promise<string>;
  /** A page of `owner`'s conversations, newest first. @throws OwnerGone */
  listConversations(owner: string, offset: number, limit: number): Promise<ConversationPage>;
  /** @throws SessionGone, ApiError (a title that is blank or too long) */
  renameSession(token: string, title: string): Promise<void>;
  /**
   * Change the session's model or system prompt (empty: the deployment's); replies from
   * then on use them. Nothing changes when it throws.
   * @throws SessionGone, ReplyInProgress (a new model while replies are due),
   *   ApiError (an unknown model, a system prompt too long or not taken here)
   */
  changeSession(token: string, choice: SessionChoice): Promise<void>;
  /** Delete for good. @throws SessionGone */
  deleteSession(token: string): Promise<void>;
  /** @throws SessionGone */
  exportSession(token: string, format: ExportFormat): Promise<ExportedFile>;
}

type Params = Record<string, string | number>;

/**
 * The API of the server at `base` ("" for the page's own origin); `idToken` gives the
 * signed-in person's ID token, sent for the owner `PERSON` (the page's hook by default).
 */
export function httpApi(
  base = "",
  idToken: () => Promise<string | null> = () => pageIdToken(),
): Api {
  /**
   * The response to a request, its token (`bearer`: a session or owner token) in the
   * Authorization header; or the error it stands for.
   */
  async function send(
    method: string,
    path: string,
    params: Params,
    bearer: string | null,
    body?: unknown,
  ) {
    const query = new URLSearchParams(
      Object.entries(params).map(([key, value]) => [key, String(value)]),
    );
    const headers: Record<string, string> = { Accept: "application/json" };
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    const init: RequestInit = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response: Response;
    try {
      const search = query.toString();
      response = await fetch(`${base}${path}${search ? `?${search}` : ""}`, init);
    } catch (e) {
      throw new Unreachable(e);
    }
    if (response.ok) return response;
    let detail = `HTTP ${response.status}`;
    try {
      detail = detailOf(await response.json()) ?? detail;
    } catch {
      // not JSON: the status says it
    }
    if (response.status >= 502 && response.status <= 504) throw new Unreachable(detail);
    throw new ApiError(response.status, detail);
  }

  /** The JSON answer to a request (with `payload` as its body), checked by `valid`. */
  async function json<T>(
    method: string,
    path: string,
    params: Params,
    bearer: string | null,
    valid: (value: unknown) => value is T,
    payload?: unknown,
  ): Promise<T> {
    const response = await send(method, path, params, bearer, payload);
    let body: unknown = null;
    try {
      body = await response.json();
    } catch {
      // reported below
    }
    if (valid(body)) return body;
    throw new ApiError(response.status, `the server's answer to ${path} is not what was expected`);
  }

  /** `call()`, with a 400 turned into `gone` (the token it names is unknown). */
  async function naming<T>(gone: () => Error, call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (e) {
      if (e instanceof ApiError && e.status === 400) throw gone();
      throw e;
    }
  }
  const sessionGone = () => new SessionGone();
  const ownerGone = () => new OwnerGone();

  /** What a request for `owner` carries: the person's current ID token for `PERSON`. */
  async function ownerBearer(owner: string | null | undefined): Promise<string | null> {
    if (owner !== PERSON) return owner ?? null;
    const token = await idToken();
    if (token === null) throw new NotSignedIn();
    return token;
  }

  /** `PATCH /session`; a 400 that names the session is SessionGone. */
  async function patch(token: string, changes: SessionChoice & { title?: string }) {
    try {
      await send("PATCH", "/session", {}, token, changes);
    } catch (e) {
      // 400 is also a bad title, model or prompt: only the server's words tell them apart.
      if (e instanceof ApiError && e.status === 400 && /does not exist/.test(e.detail)) {
        throw new SessionGone();
      }
      if (e instanceof ApiError && e.status === 409) throw new ReplyInProgress();
      throw e;
    }
  }

  return {
    async createSession(name, owner, choice) {
      // No body without a choice: the request stays the one every server takes.
      const body = choice && Object.keys(choice).length > 0 ? choice : undefined;
      const bearer = await ownerBearer(owner);
      try {
        return await json("POST", "/token", { name }, bearer, isSessionView, body);
      } catch (e) {
        // A 400 names the owner only when the name is fine: the page checks names first.
        if (owner && e instanceof ApiError && e.status === 400 && /owner/i.test(e.detail)) {
          throw new OwnerGone();
        }
        throw e;
      }
    },
    refreshSession: (token) =>
      naming(sessionGone, () => json("GET", "/refresh_token", {}, token, isSessionView)),
    async createOwner() {
      return (await json("POST", "/owner", {}, null, isOwnerView)).owner;
    },
    listConversations: async (owner, offset, limit) => {
      const bearer = await ownerBearer(owner);
      return naming(ownerGone, () =>
        json("GET", "/conversations", { offset, limit }, bearer, isConversationPage),
      );
    },
    async listModels() {
      return (await json("GET", "/models", {}, null, isModelList)).models;
    },
    renameSession: (token, title) => patch(token, { title }),
    changeSession: (token, choice) => patch(token, choice),
    async deleteSession(token) {
      // The token alone is the credential: the owner check (`&owner=`) would put the
      // owner token in a URL.
      await naming(sessionGone, () => send("DELETE", "/session", {}, token));
    },
    async exportSession(token, format) {
      const response = await naming(sessionGone, () =>
        send("GET", "/session/export", { format }, token),
      );
      return { blob: await response.blob(), format };
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
