// What crosses the wire between the browser and a Parley server: the REST bodies,
// the WebSocket events (server -> client) and commands (client -> server). The README's
// "API" section is the contract these types follow.

export interface ChatMessage {
  id: string;
  role: "user" | "assistant";
  content: string;
  /** ISO 8601 UTC. */
  timestamp: string;
  /** Replies only: the person stopped it; `content` is then the partial text. */
  stopped?: boolean;
  /** Replies only: the id of the model that wrote it (`GET /models`). */
  model?: string;
  /**
   * User messages only, absent when empty: the turn's earlier versions, oldest first
   * (each regenerate or edit keeps the text and reply it replaced).
   */
  versions?: Version[];
}

/** An earlier version of a turn: the user's text then, and the reply it got (null: none). */
export interface Version {
  content: string;
  /** ISO 8601 UTC. */
  timestamp: string;
  reply: ChatMessage | null;
}

export interface Reply extends ChatMessage {
  role: "assistant";
}

/** `POST /token` and `GET /refresh_token`: a session with its history in conversation order. */
export interface SessionView {
  token: string;
  name: string;
  session_start: string;
  /** The model the session chose; absent: the catalog's default. */
  model?: string;
  /** The session's own system prompt; absent: the deployment's. */
  system_prompt?: string;
  messages: ChatMessage[];
}

/** A model a session may choose (`GET /models`). */
export interface ModelInfo {
  id: string;
  /** Its name for people. */
  label: string;
  description: string;
  /** Sessions get it unless they choose another. */
  default: boolean;
}

/** What a session chooses when it starts or later (`POST /token`'s body, `PATCH /session`). */
export interface SessionChoice {
  model?: string;
  /** Empty: the deployment's own. */
  system_prompt?: string;
}

export interface QueuedEvent {
  type: "queued";
  message_id: string;
  message?: ChatMessage;
}

export interface TokenEvent {
  type: "token";
  message_id: string;
  content: string;
  event_id?: string;
}

export interface RestartEvent {
  type: "restart";
  message_id: string;
  event_id?: string;
}

export interface DoneEvent {
  type: "done";
  message_id: string;
  reply: Reply;
  event_id?: string;
}

export interface ErrorEvent {
  type: "error";
  message_id: string | null;
  code: string;
  detail: string;
  event_id?: string;
  /** An admission limit's refusal: seconds to wait before sending again. */
  retry_after_s?: number;
}

/**
 * A turn was regenerated or edited: `message` is the user message as it now stands
 * (without its earlier versions), `version` the earlier version this revision kept
 * (absent when it kept none: a regenerate after a failed reply) and `version_count` how
 * many the turn keeps now, this one included. The turn's reply is gone from view; the
 * new one follows as usual (`token` events, then `done` or an `error`).
 */
export interface RevisedEvent {
  type: "revised";
  message_id: string;
  message: ChatMessage;
  version?: Version;
  version_count: number;
  event_id?: string;
}

/**
 * A resume went past the events the session keeps (its newest `EVENTS_MAXLEN`): events
 * after the cursor were trimmed, and the replay that follows starts at `oldest_event_id`.
 * The replies that finished meanwhile are in history: load it again. It is not an event
 * of the stream itself (no `event_id`).
 */
export interface GapEvent {
  type: "gap";
  oldest_event_id: string;
  detail: string;
}

export type ServerEvent =
  | QueuedEvent
  | TokenEvent
  | RestartEvent
  | DoneEvent
  | ErrorEvent
  | RevisedEvent
  | GapEvent;

/** `POST /owner`: the token that owns and lists a person's conversations. */
export interface OwnerView {
  owner: string;
}

/** One conversation of an owner (`GET /conversations`). */
export interface ConversationSummary {
  token: string;
  /** Empty until the server titles it (after its first reply) or the person does. */
  title: string;
  name: string;
  /** ISO 8601 UTC. */
  created: string;
  /** ISO 8601 UTC: its newest message, or `created`. */
  last_activity: string;
  message_count: number;
}

/** A page of an owner's conversations, newest first. */
export interface ConversationPage {
  conversations: ConversationSummary[];
  total: number;
  /** The offset of the next page; null on the last one. */
  next_offset: number | null;
}

/** The formats `GET /session/export` offers. */
export type ExportFormat = "json" | "markdown";

/** Close codes the client acts on. */
export const CLOSE_POLICY_VIOLATION = 1008; // bad token or session expired: do not reconnect

type Json = Record<string, unknown>;

const isObject = (value: unknown): value is Json =>
  typeof value === "object" && value !== null && !Array.isArray(value);
const isString = (value: unknown): value is string => typeof value === "string";
const optionalString = (value: unknown): boolean => value === undefined || isString(value);

function isMessage(value: unknown): value is ChatMessage {
  return (
    isObject(value) &&
    isString(value.id) &&
    (value.role === "user" || value.role === "assistant") &&
    isString(value.content) &&
    isString(value.timestamp) &&
    optionalString(value.model) &&
    (value.versions === undefined ||
      (Array.isArray(value.versions) && value.versions.every(isVersion)))
  );
}

function isVersion(value: unknown): value is Version {
  return (
    isObject(value) &&
    isString(value.content) &&
    isString(value.timestamp) &&
    (value.reply === null || isMessage(value.reply))
  );
}

/**
 * A server frame as an event, or null when it is not one (unknown type, missing or
 * mistyped fields, not JSON). Unknown extra fields are kept and ignored.
 */
export function parseEvent(text: string): ServerEvent | null {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    return null;
  }
  if (!isObject(data)) return null;
  if (data.type === "gap") {
    return isString(data.oldest_event_id) && isString(data.detail)
      ? (data as unknown as GapEvent)
      : null;
  }
  if (!isString(data.message_id) && data.type !== "error") return null;
  if (!optionalString(data.event_id)) return null;
  switch (data.type) {
    case "queued":
      return data.message === undefined || isMessage(data.message)
        ? (data as unknown as QueuedEvent)
        : null;
    case "token":
      return isString(data.content) ? (data as unknown as TokenEvent) : null;
    case "restart":
      return data as unknown as RestartEvent;
    case "done":
      return isMessage(data.reply) ? (data as unknown as DoneEvent) : null;
    case "revised":
      return isMessage(data.message) &&
        data.message.role === "user" &&
        (data.version === undefined || isVersion(data.version)) &&
        typeof data.version_count === "number"
        ? (data as unknown as RevisedEvent)
        : null;
    case "error":
      return (data.message_id === null || isString(data.message_id)) &&
        isString(data.code) &&
        isString(data.detail) &&
        (data.retry_after_s === undefined || typeof data.retry_after_s === "number")
        ? (data as unknown as ErrorEvent)
        : null;
    default:
      return null;
  }
}

/** Whether `value` has the shape of a session view. */
export function isSessionView(value: unknown): value is SessionView {
  return (
    isObject(value) &&
    isString(value.token) &&
    isString(value.name) &&
    isString(value.session_start) &&
    optionalString(value.model) &&
    optionalString(value.system_prompt) &&
    Array.isArray(value.messages) &&
    value.messages.every(isMessage)
  );
}

const isSummary = (value: unknown): value is ConversationSummary =>
  isObject(value) &&
  isString(value.token) &&
  isString(value.title) &&
  isString(value.name) &&
  isString(value.created) &&
  isString(value.last_activity) &&
  typeof value.message_count === "number";

/** Whether `value` has the shape of a page of conversations. */
export function isConversationPage(value: unknown): value is ConversationPage {
  return (
    isObject(value) &&
    Array.isArray(value.conversations) &&
    value.conversations.every(isSummary) &&
    typeof value.total === "number" &&
    (value.next_offset === null || typeof value.next_offset === "number")
  );
}

const isModelInfo = (value: unknown): value is ModelInfo =>
  isObject(value) &&
  isString(value.id) &&
  isString(value.label) &&
  isString(value.description) &&
  typeof value.default === "boolean";

/** Whether `value` has the shape of `GET /models`'s answer. */
export const isModelList = (value: unknown): value is { models: ModelInfo[] } =>
  isObject(value) && Array.isArray(value.models) && value.models.every(isModelInfo);

/** Whether `value` has the shape of an owner. */
export const isOwnerView = (value: unknown): value is OwnerView =>
  isObject(value) && isString(value.owner);

/**
 * Stream entry ids ("<ms>-<n>") compared in stream order: negative, zero or positive.
 * The server's event ids are Redis stream ids, so this is the order events were made.
 */
export function compareEventIds(a: string, b: string): number {
  const [aMs = 0, aSeq = 0] = a.split("-").map(Number);
  const [bMs = 0, bSeq = 0] = b.split("-").map(Number);
  return aMs - bMs || aSeq - bSeq;
}

/** The id to resume after when nothing has been seen yet: the start of the stream. */
export const STREAM_START = "0-0";

/** Ask again for the reply to the session's last user message. */
export interface RegenerateCommand {
  type: "regenerate";
}

/** Replace the text of the session's last user message and ask for a new reply. */
export interface EditCommand {
  type: "edit";
  message_id: string;
  content: string;
}

export const messageCommand = (content: string): string =>
  JSON.stringify({ type: "message", content });
export const stopCommand = (): string => JSON.stringify({ type: "stop" });
export const regenerateCommand = (): string =>
  JSON.stringify({ type: "regenerate" } satisfies RegenerateCommand);
export const editCommand = (messageId: string, content: string): string =>
  JSON.stringify({ type: "edit", message_id: messageId, content } satisfies EditCommand);
