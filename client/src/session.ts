// One chat session in the browser: its conversation state and the WebSocket that keeps
// it current. The page subscribes to it (useSyncExternalStore) and calls its methods.
//
// Connection life:
// - the socket opens with `?after=<last event id>` ("0-0" at first: every stored event),
//   so the server replays what this page has not seen before it goes live;
// - when it drops (anything but the page closing it, or 1008), the session waits with
//   exponential backoff and jitter, loads the history (`/refresh_token`: it also tells an
//   expired session from a server that is down, which a failed handshake cannot), then
//   opens a new socket that resumes after the last event seen;
// - when the server says the resume went past the events it keeps (a `gap` event), the
//   history is loaded again, and the socket goes on with the events that follow;
// - messages typed meanwhile wait in order and go out as soon as a socket is open; none
//   is dropped: one sent just before a drop is looked for in the history and sent again
//   only if it is not there;
// - on a page that signs people in (identity.ts), each socket offers the person's ID
//   token, asked of the page afresh; when it expires (`auth_expired`, then 1008) the
//   session reconnects as after a drop, with the page's next token.

import { SessionGone, type Api } from "./api";
import { socketProtocols } from "./identity";
import {
  activeMessage,
  emptyConversation,
  reduce,
  revisableTurn,
  waitingToSend,
  type Action,
  type Conversation,
} from "./conversation";
import {
  CLOSE_POLICY_VIOLATION,
  editCommand,
  messageCommand,
  parseEvent,
  regenerateCommand,
  STREAM_START,
  stopCommand,
  type SessionChoice,
  type SessionView,
} from "./protocol";

export type ConnectionStatus =
  | { kind: "connecting" }
  | { kind: "open" }
  /** `retryAt`: when the next attempt starts (ms since the epoch); null while it runs. */
  | { kind: "reconnecting"; attempt: number; retryAt: number | null }
  | { kind: "expired" }
  | { kind: "closed" };

export interface ChatState {
  token: string;
  name: string;
  sessionStart: string;
  /** The model the session chose (`GET /models`); null: the catalog's default. */
  model: string | null;
  /** The session's own system prompt; "": the deployment's. */
  systemPrompt: string;
  conversation: Conversation;
  connection: ConnectionStatus;
  /** The message whose reply the person asked to stop, until that reply ends. */
  stopping: string | null;
  /** The message whose turn was sent to be regenerated or edited, until the server answers. */
  revising: string | null;
}

/** The part of the browser's WebSocket the session uses (tests pass a fake). */
export interface SocketLike {
  readonly readyState: number;
  onopen: ((event: Event) => void) | null;
  onmessage: ((event: MessageEvent) => void) | null;
  onclose: ((event: CloseEvent) => void) | null;
  onerror: ((event: Event) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

const OPEN = 1; // WebSocket.OPEN

export interface Backoff {
  /** First delay (ms), doubling per failed attempt up to `maxMs`, jittered by ±20%. */
  initialMs: number;
  maxMs: number;
}

export const DEFAULT_BACKOFF: Backoff = { initialMs: 500, maxMs: 15_000 };

/** The delay (ms) before reconnect attempt `attempt` (from 0); `random` in [0, 1). */
export function backoffDelay(backoff: Backoff, attempt: number, random: number): number {
  const base = Math.min(backoff.maxMs, backoff.initialMs * 2 ** attempt);
  return Math.round(base * (0.8 + 0.4 * random));
}

export interface SessionDeps {
  api: Pick<Api, "refreshSession">;
  /** `ws://host:port`: the socket URL is `${socketBase}/chat?token=...&after=...`. */
  socketBase: string;
  openSocket?: (url: string, protocols?: string[]) => SocketLike;
  /** The signed-in person's ID token, asked for before each socket (identity.ts). */
  idToken?: () => Promise<string | null>;
  backoff?: Backoff;
  now?: () => number;
  random?: () => number;
}

/** The model and system prompt a session view says the session chose. */
const choiceOf = (view: SessionView): Pick<ChatState, "model" | "systemPrompt"> => ({
  model: view.model ?? null,
  systemPrompt: view.system_prompt ?? "",
});

export class ChatSession {
  private state: ChatState;
  private readonly listeners = new Set<() => void>();
  private readonly api: Pick<Api, "refreshSession">;
  private readonly socketBase: string;
  private readonly openSocket: (url: string, protocols?: string[]) => SocketLike;
  private readonly idToken: (() => Promise<string | null>) | null;
  private readonly backoff: Backoff;
  private readonly now: () => number;
  private readonly random: () => number;
  private socket: SocketLike | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private attempt = 0;
  private sessionExpired = false;
  /** The socket's ID token expired: the close that follows is no end of the session. */
  private identityExpired = false;
  /** The wait (ms) an admission limit asked for before the next socket. */
  private retryAfterMs = 0;
  private disposed = false;
  /** Bumped by dispose(): a reconnect begun before it must not open a socket after. */
  private generation = 0;

  constructor(view: SessionView, deps: SessionDeps) {
    this.api = deps.api;
    this.socketBase = deps.socketBase;
    this.openSocket = deps.openSocket ?? ((url, protocols) => new WebSocket(url, protocols));
    this.idToken = deps.idToken ?? null;
    this.backoff = deps.backoff ?? DEFAULT_BACKOFF;
    this.now = deps.now ?? Date.now;
    this.random = deps.random ?? Math.random;
    this.state = {
      token: view.token,
      name: view.name,
      sessionStart: view.session_start,
      ...choiceOf(view),
      conversation: reduce(emptyConversation(), { type: "history", view }),
      connection: { kind: "connecting" },
      stopping: null,
      revising: null,
    };
  }

  // -- for React ------------------------------------------------------------------------

  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  getState = (): ChatState => this.state;

  // -- what the person does -------------------------------------------------------------

  /** Open the socket; after dispose(), start() connects again. */
  start(): void {
    this.disposed = false;
    this.update({ connection: { kind: "connecting" } });
    this.connect();
  }

  /** Send a message now, or as soon as a socket is open. Blank text is ignored. */
  send(content: string): void {
    if (!content.trim() || this.state.connection.kind === "expired") return;
    this.dispatch({ type: "compose", content, timestamp: new Date(this.now()).toISOString() });
    this.flush();
  }

  /** Ask the server to stop the reply being generated (only while connected). */
  stop(): void {
    const active = activeMessage(this.state.conversation);
    if (active?.id == null || !this.isOpen()) return;
    this.socket?.send(stopCommand());
    this.update({ stopping: active.id });
  }

  /**
   * Ask for a new reply to the last turn (only while connected, with no reply on its
   * way); the current reply becomes an earlier version.
   */
  regenerate(): void {
    const turn = this.revisable();
    if (turn?.id == null) return;
    this.socket?.send(regenerateCommand());
    this.update({ revising: turn.id });
  }

  /** Replace the last turn's message with `content` and ask for a new reply. */
  edit(messageId: string, content: string): void {
    const turn = this.revisable();
    if (turn?.id !== messageId || !content.trim()) return;
    this.socket?.send(editCommand(messageId, content));
    this.update({ revising: messageId });
  }

  /** The last turn, if it can be regenerated or edited now. */
  revisable(): ReturnType<typeof revisableTurn> {
    if (!this.isOpen() || this.state.revising !== null) return undefined;
    return revisableTurn(this.state.conversation);
  }

  /** The server took `choice` (`PATCH /session`): show it until history says otherwise. */
  chose(choice: SessionChoice): void {
    const change: Partial<ChatState> = {};
    if (choice.model !== undefined) change.model = choice.model;
    if (choice.system_prompt !== undefined) change.systemPrompt = choice.system_prompt.trim();
    this.update(change);
  }

  /** Send a refused message again. */
  retry(key: string): void {
    this.dispatch({ type: "retry", key });
    this.flush();
  }

  dismiss(key: string): void {
    this.dispatch({ type: "dismiss", key });
  }

  /** Skip the wait before the next reconnect attempt. */
  retryNow = (): void => {
    if (this.state.connection.kind !== "reconnecting" || this.timer === null) return;
    clearTimeout(this.timer);
    this.timer = null;
    void this.reconnect();
  };

  /** Close the socket for good (the page leaves this session). */
  dispose(): void {
    this.disposed = true;
    this.generation += 1;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const socket = this.socket;
    this.socket = null;
    socket?.close(1000, "page closed");
    this.update({ connection: { kind: "closed" } });
  }

  // -- the socket -----------------------------------------------------------------------

  private connect(): void {
    if (this.idToken === null) {
      this.open(undefined);
      return;
    }
    const generation = this.generation;
    const open = (token: string | null) => {
      if (!this.disposed && generation === this.generation) this.open(socketProtocols(token));
    };
    void this.idToken().then(open, () => {
      open(null);
    });
  }

  private open(protocols: string[] | undefined): void {
    const after = this.state.conversation.lastEventId ?? STREAM_START;
    const params = new URLSearchParams({ token: this.state.token, after });
    let socket: SocketLike;
    try {
      socket = this.openSocket(`${this.socketBase}/chat?${params.toString()}`, protocols);
    } catch (e) {
      console.warn("cannot open the chat socket:", e);
      this.scheduleReconnect();
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      if (this.socket !== socket) return;
      this.attempt = 0;
      this.update({ connection: { kind: "open" } });
      this.flush();
    };
    socket.onmessage = (message) => {
      if (this.socket !== socket || typeof message.data !== "string") return;
      const event = parseEvent(message.data);
      if (event === null) {
        console.warn("ignoring a frame that is not a Parley event:", message.data);
        return;
      }
      if (event.type === "error" && event.code === "session_expired") this.sessionExpired = true;
      if (event.type === "error" && event.code === "auth_expired") this.identityExpired = true;
      // A socket refused by an admission limit: reconnect no sooner than it says.
      if (event.type === "error" && event.message_id === null && event.retry_after_s !== undefined) {
        this.retryAfterMs = event.retry_after_s * 1000;
      }
      this.dispatch({ type: "event", event });
      if (event.type === "gap") void this.reloadHistory(socket);
    };
    socket.onclose = (close) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.dispatch({ type: "socketLost" });
      if (this.disposed) return;
      const identityExpired = this.identityExpired;
      this.identityExpired = false;
      if (identityExpired) this.scheduleReconnect();
      else if (this.sessionExpired || close.code === CLOSE_POLICY_VIOLATION) this.expire();
      else this.scheduleReconnect();
    };
    socket.onerror = () => {
      // Always followed by a close event, which does the work.
    };
  }

  private scheduleReconnect(): void {
    const delay = Math.max(backoffDelay(this.backoff, this.attempt, this.random()), this.retryAfterMs);
    this.retryAfterMs = 0;
    this.attempt += 1;
    this.update({
      connection: { kind: "reconnecting", attempt: this.attempt, retryAt: this.now() + delay },
    });
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.reconnect();
    }, delay);
  }

  private async reconnect(): Promise<void> {
    this.update({ connection: { kind: "reconnecting", attempt: this.attempt, retryAt: null } });
    const generation = this.generation;
    let view: SessionView;
    try {
      view = await this.api.refreshSession(this.state.token);
    } catch (e) {
      if (this.disposed || generation !== this.generation) return;
      if (e instanceof SessionGone) this.expire();
      else this.scheduleReconnect();
      return;
    }
    if (this.disposed || generation !== this.generation) return;
    // Another tab may have changed the model or prompt meanwhile.
    this.update(choiceOf(view));
    this.dispatch({ type: "history", view });
    this.connect();
  }

  /** Load the history again while `socket` stays the session's (after a `gap`). */
  private async reloadHistory(socket: SocketLike): Promise<void> {
    let view: SessionView;
    try {
      view = await this.api.refreshSession(this.state.token);
    } catch (e) {
      // The socket goes on; the next reconnect loads the history anyway.
      console.warn("cannot reload the history after a gap:", e);
      return;
    }
    if (this.socket !== socket) return;
    this.update(choiceOf(view));
    this.dispatch({ type: "history", view });
  }

  private expire(): void {
    this.update({ connection: { kind: "expired" }, stopping: null, revising: null });
  }

  private isOpen(): boolean {
    return this.socket !== null && this.socket.readyState === OPEN;
  }

  /** Send every waiting message, in order, if a socket is open. */
  private flush(): void {
    if (!this.isOpen() || this.state.connection.kind !== "open") return;
    const waiting = waitingToSend(this.state.conversation);
    if (waiting.length === 0) return;
    for (const item of waiting) this.socket?.send(messageCommand(item.content));
    this.dispatch({ type: "sent", keys: waiting.map((i) => i.key) });
  }

  // -- state ----------------------------------------------------------------------------

  private dispatch(action: Action): void {
    const conversation = reduce(this.state.conversation, action);
    // A revision ends with its `revised` event or a refusal; a lost socket may have
    // lost either, and history (loaded before the next socket) shows what happened.
    const revisionEnded =
      (action.type === "event" &&
        (action.event.type === "revised" || action.event.type === "error")) ||
      action.type === "socketLost";
    const revising = revisionEnded ? null : this.state.revising;
    if (conversation === this.state.conversation && revising === this.state.revising) return;
    let { stopping } = this.state;
    if (stopping !== null && activeMessage(conversation)?.id !== stopping) stopping = null;
    // A stop the server could not act on (unavailable, unknown to an older server)
    // comes back as an error without a message id: let the person try again.
    if (action.type === "event" && action.event.type === "error" && !action.event.message_id) {
      stopping = null;
    }
    this.update({ conversation, stopping, revising });
  }

  private update(change: Partial<ChatState>): void {
    this.state = { ...this.state, ...change };
    for (const listener of this.listeners) listener();
  }
}
