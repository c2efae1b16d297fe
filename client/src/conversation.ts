// The conversation as the page shows it, and how each server event, history load and
// local action changes it. Pure functions only: the session (session.ts) feeds them,
// the tests (conversation.test.ts) drive them directly.
//
// Three sources meet here and must never show a message twice or lose one:
// - what the person typed, before the server has it (status "waiting" or "sending");
// - the server's events, live or replayed after a reconnect (each reply event carries
//   an event id, and events at or before the last id seen are dropped);
// - the session's history (`/refresh_token`), the source of truth, loaded at start and
//   before every reconnect.
//
// A turn can be answered again (regenerate) or its message edited: the server's
// `revised` event then gives the message as it now stands and the one earlier version
// the revision kept, numbered (`version_count`), and the turn's reply leaves the view
// until the new one streams in. A turn's versions come from history, then accumulate
// from these events; a replayed revision that history already holds adds nothing.
//
// A `gap` event says that a resume went past the events the server keeps: replies that
// finished meanwhile come from history (the session loads it again), and the replies
// streaming here lost tokens, so their text goes. The replay then starts at the oldest
// event kept, which may be in the middle of a reply (a session's replies come one at a
// time, so at most one): when its first event is a `token`, that reply's tokens are
// skipped until its `done` (or `restart`), which is whole.

import { describeError, REFUSALS, type Notice } from "./errors";
import {
  compareEventIds,
  type ChatMessage,
  type RevisedEvent,
  type ServerEvent,
  type SessionView,
  type Version,
} from "./protocol";

/**
 * Where a user message is:
 * - waiting: typed while the socket was down; sent when it is back;
 * - sending: sent on the open socket, not yet acknowledged (`queued`);
 * - unconfirmed: sent, but the socket dropped before the acknowledgement; history
 *   says whether it arrived (then it is queued) or not (then it is sent again);
 * - queued: durable and in history, answered in turn;
 * - refused: the server turned it down (see `error`); it can be sent again.
 */
export type UserStatus = "waiting" | "sending" | "unconfirmed" | "queued" | "refused";

export interface UserItem {
  kind: "user";
  /** Stable identity on the page (survives the message getting its server id). */
  key: string;
  /** The server's message id, once it is queued. */
  id: string | null;
  content: string;
  /** ISO 8601: the server's time once queued, the local time before. */
  timestamp: string;
  status: UserStatus;
  /** Why it was refused, or why it got no reply. */
  error?: Notice;
  /** The turn's earlier versions, oldest first (regenerated or edited). */
  versions: Version[];
}

export interface ReplyItem {
  kind: "assistant";
  key: string;
  /** The reply's own id, once done. */
  id: string | null;
  /** The user message this answers (null for a history reply with no message before it). */
  replyTo: string | null;
  content: string;
  timestamp: string | null;
  /** Tokens are still arriving. */
  streaming: boolean;
  /** The person stopped it; `content` is what had been generated. */
  stopped: boolean;
  /** The id of the model that wrote it, once done (null: not known yet, or an older server). */
  model: string | null;
}

export type Item = UserItem | ReplyItem;

export interface GeneralNotice extends Notice {
  key: string;
}

export interface Conversation {
  items: Item[];
  /** The last reply event applied: where a reconnect resumes. */
  lastEventId: string | null;
  /** Errors that concern no message on the page. */
  notices: GeneralNotice[];
  /** A `gap` came, and no event with an id since. */
  afterGap: boolean;
  /** The message whose reply a gap cut: its tokens are skipped until it ends or restarts. */
  cutReply: string | null;
  /** Counter for local keys. */
  nextKey: number;
}

export type Action =
  | { type: "history"; view: SessionView }
  | { type: "event"; event: ServerEvent }
  | { type: "compose"; content: string; timestamp: string }
  | { type: "sent"; keys: string[] }
  | { type: "socketLost" }
  | { type: "retry"; key: string }
  | { type: "dismiss"; key: string };

export const emptyConversation = (): Conversation => ({
  items: [],
  lastEventId: null,
  notices: [],
  afterGap: false,
  cutReply: null,
  nextKey: 1,
});

export function reduce(state: Conversation, action: Action): Conversation {
  switch (action.type) {
    case "history":
      return mergeHistory(state, action.view.messages);
    case "event":
      return applyEvent(state, action.event);
    case "compose": {
      const item: UserItem = {
        kind: "user",
        key: `local-${state.nextKey}`,
        id: null,
        content: action.content,
        timestamp: action.timestamp,
        status: "waiting",
        versions: [],
      };
      return { ...state, items: [...state.items, item], nextKey: state.nextKey + 1 };
    }
    case "sent": {
      const keys = new Set(action.keys);
      return mapUsers(state, (u) =>
        keys.has(u.key) && u.status === "waiting" ? { ...u, status: "sending" } : u,
      );
    }
    case "socketLost":
      return mapUsers(state, (u) => (u.status === "sending" ? { ...u, status: "unconfirmed" } : u));
    case "retry":
      return mapUsers(state, (u) =>
        u.key === action.key && u.status === "refused"
          ? { ...u, status: "waiting", error: undefined }
          : u,
      );
    case "dismiss":
      return { ...state, notices: state.notices.filter((n) => n.key !== action.key) };
  }
}

// -- selectors ------------------------------------------------------------------------

/** User messages typed and not yet sent, in order. */
export const waitingToSend = (state: Conversation): UserItem[] =>
  state.items.filter((i): i is UserItem => i.kind === "user" && i.status === "waiting");

export const findReply = (state: Conversation, messageId: string): ReplyItem | undefined =>
  state.items.find((i): i is ReplyItem => i.kind === "assistant" && i.replyTo === messageId);

/**
 * The conversation's last turn, if it can be regenerated or edited: its user message is
 * in history (queued), nothing typed waits behind it and no reply is in progress.
 */
export function revisableTurn(state: Conversation): UserItem | undefined {
  if (activeMessage(state) !== undefined) return undefined;
  const last = state.items.findLast((i): i is UserItem => i.kind === "user");
  if (last?.status !== "queued" || last.id === null) return undefined;
  return last;
}

/**
 * The models that wrote the conversation's replies, earlier versions included: when
 * there are several, each reply says which one wrote it.
 */
export function replyModels(state: Conversation): Set<string> {
  const models = new Set<string>();
  for (const item of state.items) {
    if (item.kind === "assistant" && item.model !== null) models.add(item.model);
    if (item.kind !== "user") continue;
    for (const version of item.versions) {
      if (version.reply?.model !== undefined) models.add(version.reply.model);
    }
  }
  return models;
}

/**
 * The user message being answered now: the first queued one whose reply has not ended.
 * Replies come in the order messages were sent, so later ones wait behind it.
 */
export function activeMessage(state: Conversation): UserItem | undefined {
  const finished = new Set<string>();
  for (const item of state.items) {
    if (item.kind === "assistant" && !item.streaming && item.replyTo !== null) {
      finished.add(item.replyTo);
    }
  }
  return state.items.find(
    (i): i is UserItem =>
      i.kind === "user" &&
      i.status === "queued" &&
      i.id !== null &&
      i.error === undefined &&
      !finished.has(i.id),
  );
}

// -- history --------------------------------------------------------------------------

function mergeHistory(state: Conversation, messages: ChatMessage[]): Conversation {
  const byId = new Map<string, Item>();
  for (const item of state.items) if (item.id !== null) byId.set(item.id, item);

  // Messages sent just before a socket dropped: history says whether they arrived.
  // Their server ids are unknown, so match them by content, in sending order.
  const unconfirmed = state.items.filter(
    (i): i is UserItem => i.kind === "user" && i.status === "unconfirmed",
  );
  const adopted = new Map<string, UserItem>();
  for (const message of messages) {
    if (message.role !== "user" || byId.has(message.id)) continue;
    const index = unconfirmed.findIndex((u) => u.content === message.content);
    if (index >= 0) {
      adopted.set(message.id, unconfirmed[index] as UserItem);
      unconfirmed.splice(index, 1);
    }
  }

  const items: Item[] = [];
  const answered = new Set<string>();
  let previousUser: string | null = null;
  for (const message of messages) {
    if (message.role === "user") {
      const local = byId.get(message.id) ?? adopted.get(message.id);
      items.push({
        kind: "user",
        key: local?.key ?? `m-${message.id}`,
        id: message.id,
        content: message.content,
        timestamp: message.timestamp,
        status: "queued",
        error: local?.kind === "user" ? local.error : undefined,
        versions: message.versions ?? [],
      });
      previousUser = message.id;
    } else {
      const local =
        byId.get(message.id) ?? (previousUser === null ? undefined : findReply(state, previousUser));
      items.push({
        kind: "assistant",
        key: local?.key ?? `m-${message.id}`,
        id: message.id,
        replyTo: previousUser,
        content: message.content,
        timestamp: message.timestamp,
        streaming: false,
        stopped: message.stopped === true || (local?.kind === "assistant" && local.stopped),
        model: message.model ?? null,
      });
      if (previousUser !== null) answered.add(previousUser);
      previousUser = null;
    }
  }

  // Replies still streaming here and not finished in history stay, after their message.
  for (const item of state.items) {
    if (item.kind !== "assistant" || item.replyTo === null || answered.has(item.replyTo)) continue;
    if (item.id !== null && items.some((i) => i.id === item.id)) continue;
    insertAfterMessage(items, item.replyTo, item);
  }
  // Local messages history does not have: unsent ones, refused ones, and unconfirmed
  // ones that never arrived (sent again).
  const inHistory = new Set(messages.map((m) => m.id));
  for (const item of state.items) {
    if (item.kind !== "user" || adoptedKeys(adopted).has(item.key)) continue;
    if (item.id !== null && inHistory.has(item.id)) continue;
    items.push(item.status === "unconfirmed" ? { ...item, status: "waiting" } : item);
  }
  return { ...state, items };
}

const adoptedKeys = (adopted: Map<string, UserItem>): Set<string> =>
  new Set([...adopted.values()].map((u) => u.key));

// -- events ---------------------------------------------------------------------------

function applyEvent(state: Conversation, event: ServerEvent): Conversation {
  if (event.type === "gap") return onGap(state, event.oldest_event_id);
  const eventId = event.type === "queued" ? undefined : event.event_id;
  if (eventId !== undefined) {
    if (state.lastEventId !== null && compareEventIds(eventId, state.lastEventId) <= 0) {
      return state; // seen already (a replay overlapping what arrived live)
    }
    state = { ...state, lastEventId: eventId };
    if (state.afterGap) {
      const cutReply = event.type === "token" ? event.message_id : null;
      state = { ...state, afterGap: false, cutReply };
    }
    if (state.cutReply !== null && event.message_id === state.cutReply) {
      if (event.type === "token") return state; // its beginning is gone: its done is whole
      state = { ...state, cutReply: null };
    }
  }
  switch (event.type) {
    case "queued":
      return onQueued(state, event.message_id, event.message);
    case "token":
      return updateReply(state, event.message_id, (reply) => ({
        ...reply,
        content: reply.content + event.content,
      }));
    case "restart":
      return updateReply(state, event.message_id, (reply) => ({ ...reply, content: "" }), false);
    case "done":
      return updateReply(state, event.message_id, (reply) => ({
        ...reply,
        id: event.reply.id,
        content: event.reply.content,
        timestamp: event.reply.timestamp,
        streaming: false,
        stopped: event.reply.stopped === true,
        model: event.reply.model ?? null,
      }));
    case "error":
      return onError(state, event.message_id, event.code, event.detail, event.retry_after_s);
    case "revised":
      return onRevised(state, event);
  }
}

/**
 * A resume went past the events kept (unless what it names was seen already): the
 * replies streaming here lost tokens, so their text goes; their `done` brings it whole.
 */
function onGap(state: Conversation, oldestEventId: string): Conversation {
  if (state.lastEventId !== null && compareEventIds(state.lastEventId, oldestEventId) >= 0) {
    return state;
  }
  const items = state.items.filter((i) => !(i.kind === "assistant" && i.streaming));
  return { ...state, items, afterGap: true, cutReply: null };
}

/**
 * A turn was regenerated or edited: its message as it now stands (text, time), the
 * version the revision kept added to its earlier versions, its reply out of view, any
 * error of the old attempt gone. The new reply then arrives like any other.
 *
 * The version is added only if the turn has fewer than `version_count` versions: a
 * revision replayed after a history load that holds it (a resume from before it) adds
 * nothing. Versions missed in between (none, unless events were lost, which a `gap`
 * reports, and the history then reloaded brings them) are not guessed.
 */
function onRevised(state: Conversation, event: RevisedEvent): Conversation {
  const messageId = event.message_id;
  const user = state.items.find((i): i is UserItem => i.kind === "user" && i.id === messageId);
  if (user === undefined) return state; // not on the page: the next history load brings it
  const { message, version } = event;
  const added = version !== undefined && user.versions.length < event.version_count;
  const revised: UserItem = {
    ...user,
    content: message.content,
    timestamp: message.timestamp,
    status: "queued",
    error: undefined,
    versions: added ? [...user.versions, version] : user.versions,
  };
  const items = state.items
    .filter((i) => !(i.kind === "assistant" && i.replyTo === messageId))
    .map((i) => (i === user ? revised : i));
  return { ...state, items };
}

function onQueued(state: Conversation, messageId: string, message?: ChatMessage): Conversation {
  if (state.items.some((i) => i.kind === "user" && i.id === messageId)) return state;
  // The server acknowledges a socket's messages in the order they were sent; the
  // content settles which one when it is given. An `unavailable` error without a
  // message id is either a refusal or a notice of an outage, which cannot be told
  // apart: a message it marked refused and that is queued after all is taken back.
  const sending = (i: Item) =>
    i.kind === "user" &&
    (i.status === "sending" || (i.status === "refused" && i.error?.code === "unavailable"));
  let index = state.items.findIndex((i) => sending(i) && i.content === message?.content);
  if (index < 0) index = state.items.findIndex((i) => i.kind === "user" && i.status === "sending");
  if (index >= 0) {
    const items = [...state.items];
    const item = items[index] as UserItem;
    items[index] = {
      ...item,
      id: messageId,
      status: "queued",
      error: undefined,
      content: message?.content ?? item.content,
      timestamp: message?.timestamp ?? item.timestamp,
      versions: message?.versions ?? item.versions,
    };
    return { ...state, items };
  }
  if (message === undefined) return state;
  // Queued from elsewhere (another tab of this session): show it too.
  const item: UserItem = {
    kind: "user",
    key: `m-${messageId}`,
    id: messageId,
    content: message.content,
    timestamp: message.timestamp,
    status: "queued",
    versions: message.versions ?? [],
  };
  return { ...state, items: [...state.items, item] };
}

/**
 * Change the reply to `messageId` with `change`, creating it (streaming, empty) first
 * if `create`. A reply that has ended is final: later events for it (a replay of what
 * history already holds) change nothing.
 */
function updateReply(
  state: Conversation,
  messageId: string,
  change: (reply: ReplyItem) => ReplyItem,
  create = true,
): Conversation {
  const index = state.items.findIndex((i) => i.kind === "assistant" && i.replyTo === messageId);
  if (index >= 0) {
    const reply = state.items[index] as ReplyItem;
    if (!reply.streaming) return state;
    const items = [...state.items];
    items[index] = change(reply);
    return { ...state, items };
  }
  const user = state.items.find((i): i is UserItem => i.kind === "user" && i.id === messageId);
  if (!create || user?.error !== undefined) return state;
  const reply = change({
    kind: "assistant",
    key: `reply-${messageId}`,
    id: null,
    replyTo: messageId,
    content: "",
    timestamp: null,
    streaming: true,
    stopped: false,
    model: null,
  });
  const items = [...state.items];
  insertAfterMessage(items, messageId, reply);
  return { ...state, items };
}

function onError(
  state: Conversation,
  messageId: string | null,
  code: string,
  detail: string,
  retryAfterS?: number,
): Conversation {
  if (code === "session_expired") return state; // the session shows it (it ends the chat)
  const notice = describeError(code, detail, false, retryAfterS);
  if (messageId !== null) {
    const user = state.items.find((i) => i.kind === "user" && i.id === messageId);
    if (user !== undefined) {
      // No reply is recorded for it: drop any partial text, say why on the message.
      const items = state.items
        .filter((i) => !(i.kind === "assistant" && i.replyTo === messageId && i.streaming))
        .map((i) => (i === user ? { ...user, error: notice } : i));
      return { ...state, items };
    }
  } else if (REFUSALS.has(code)) {
    const index = state.items.findIndex((i) => i.kind === "user" && i.status === "sending");
    if (index >= 0) {
      const items = [...state.items];
      items[index] = { ...(items[index] as UserItem), status: "refused", error: notice };
      return { ...state, items };
    }
  }
  const key = `notice-${state.nextKey}`;
  const general = { key, ...describeError(code, detail, true, retryAfterS) };
  return { ...state, notices: [...state.notices, general], nextKey: state.nextKey + 1 };
}

// -- helpers --------------------------------------------------------------------------

function mapUsers(state: Conversation, change: (item: UserItem) => UserItem): Conversation {
  const items = state.items.map((item) => (item.kind === "user" ? change(item) : item));
  return items.some((item, i) => item !== state.items[i]) ? { ...state, items } : state;
}

/** Put `reply` right after the user message `messageId` (at the end if it is not shown). */
function insertAfterMessage(items: Item[], messageId: string, reply: ReplyItem): void {
  const index = items.findIndex((i) => i.kind === "user" && i.id === messageId);
  if (index < 0) items.push(reply);
  else items.splice(index + 1, 0, reply);
}
