import { describe, expect, it } from "vitest";
import {
  activeMessage,
  emptyConversation,
  reduce,
  replyModels,
  revisableTurn,
  waitingToSend,
  type Action,
  type Conversation,
  type ReplyItem,
  type UserItem,
} from "./conversation";
import { parseEvent, type ChatMessage, type ServerEvent, type Version } from "./protocol";

const T = "2026-01-01T12:00:00.000Z";

const view = (messages: ChatMessage[]) =>
  ({
    type: "history",
    view: { token: "t", name: "Ada", session_start: T, messages },
  }) satisfies Action;

const user = (id: string, content: string): ChatMessage => ({
  id,
  role: "user",
  content,
  timestamp: T,
});
const assistant = (id: string, content: string): ChatMessage => ({
  id,
  role: "assistant",
  content,
  timestamp: T,
});

const run = (state: Conversation, ...actions: Action[]) => actions.reduce(reduce, state);
const event = (e: ServerEvent): Action => ({ type: "event", event: e });
const compose = (content: string): Action => ({ type: "compose", content, timestamp: T });
const queued = (id: string, content: string): Action =>
  event({ type: "queued", message_id: id, message: user(id, content) });
const token = (id: string, content: string, eventId: string): Action =>
  event({ type: "token", message_id: id, content, event_id: eventId });
const done = (id: string, content: string, eventId: string, stopped = false): Action =>
  event({
    type: "done",
    message_id: id,
    reply: { ...assistant(`r-${id}`, content), role: "assistant", stopped },
    event_id: eventId,
  });

/** Compose and send `content`, then have it queued as `id`. */
function sendAndQueue(state: Conversation, id: string, content: string): Conversation {
  const composed = reduce(state, compose(content));
  const key = composed.items.at(-1)?.key ?? "";
  return run(composed, { type: "sent", keys: [key] }, queued(id, content));
}

const shown = (state: Conversation) =>
  state.items.map((i) =>
    i.kind === "user"
      ? `${i.kind}:${i.content}:${i.status}`
      : `${i.kind}:${i.content}:${i.streaming ? "streaming" : "done"}`,
  );

describe("history", () => {
  it("shows messages in conversation order, each reply linked to its message", () => {
    const state = reduce(
      emptyConversation(),
      view([user("m1", "hi"), assistant("a1", "hello"), user("m2", "more")]),
    );
    expect(shown(state)).toEqual(["user:hi:queued", "assistant:hello:done", "user:more:queued"]);
    expect((state.items[1] as ReplyItem).replyTo).toBe("m1");
    expect(activeMessage(state)?.id).toBe("m2");
  });
});

describe("a reply streaming in", () => {
  it("acknowledges the message, appends tokens in order, then takes the final text", () => {
    let state = reduce(emptyConversation(), compose("hello"));
    expect(shown(state)).toEqual(["user:hello:waiting"]);
    expect(waitingToSend(state)).toHaveLength(1);
    const key = state.items[0]?.key ?? "";
    state = run(state, { type: "sent", keys: [key] }, queued("m1", "hello"));
    expect(state.items[0]).toMatchObject({ key, id: "m1", status: "queued" });
    expect(activeMessage(state)?.id).toBe("m1");

    state = run(state, token("m1", "Hel", "1-0"), token("m1", "lo ", "1-1"));
    expect(shown(state)).toEqual(["user:hello:queued", "assistant:Hello :streaming"]);
    state = reduce(state, done("m1", "Hello there", "1-2"));
    expect(shown(state)).toEqual(["user:hello:queued", "assistant:Hello there:done"]);
    expect(state.lastEventId).toBe("1-2");
    expect(activeMessage(state)).toBeUndefined();
  });

  it("drops events at or before the last event id (a replay overlapping live events)", () => {
    let state = sendAndQueue(emptyConversation(), "m1", "x");
    state = run(state, token("m1", "a", "5-0"), token("m1", "b", "5-1"));
    state = run(state, token("m1", "a", "5-0"), token("m1", "b", "5-1"), token("m1", "c", "6-0"));
    expect((state.items[1] as ReplyItem).content).toBe("abc");
    expect(state.lastEventId).toBe("6-0");
  });

  it("compares event ids numerically, not as text", () => {
    let state = sendAndQueue(emptyConversation(), "m1", "x");
    state = run(state, token("m1", "a", "999-0"), token("m1", "b", "1000-0"));
    expect((state.items[1] as ReplyItem).content).toBe("ab");
  });

  it("discards the partial text on restart", () => {
    let state = sendAndQueue(emptyConversation(), "m1", "x");
    state = run(
      state,
      token("m1", "wrong ", "1-0"),
      event({ type: "restart", message_id: "m1", event_id: "1-1" }),
      token("m1", "right", "1-2"),
    );
    expect((state.items[1] as ReplyItem).content).toBe("right");
  });

  it("ignores events of a reply that has ended (a replay after history has it)", () => {
    let state = reduce(emptyConversation(), view([user("m1", "x"), assistant("a1", "full")]));
    state = run(state, token("m1", "fu", "1-0"), done("m1", "full", "1-1"));
    expect(shown(state)).toEqual(["user:x:queued", "assistant:full:done"]);
  });

  it("marks a stopped reply and keeps its partial text", () => {
    let state = sendAndQueue(emptyConversation(), "m1", "x");
    state = run(state, token("m1", "par", "1-0"), done("m1", "par", "1-1", true));
    expect(state.items[1]).toMatchObject({ content: "par", stopped: true, streaming: false });
  });

  it("answers messages in order: the next one becomes active when a reply ends", () => {
    let state = sendAndQueue(emptyConversation(), "m1", "one");
    state = sendAndQueue(state, "m2", "two");
    expect(activeMessage(state)?.id).toBe("m1");
    state = reduce(state, done("m1", "r1", "1-0"));
    expect(activeMessage(state)?.id).toBe("m2");
    state = run(state, token("m2", "r", "2-0"));
    expect(shown(state)).toEqual([
      "user:one:queued",
      "assistant:r1:done",
      "user:two:queued",
      "assistant:r:streaming",
    ]);
  });

  it("matches an acknowledgement to the message it names", () => {
    let state = run(emptyConversation(), compose("one"), compose("two"));
    state = reduce(state, { type: "sent", keys: state.items.map((i) => i.key) });
    state = reduce(state, queued("m2", "two"));
    expect(state.items.map((i) => (i.kind === "user" ? [i.content, i.id] : []))).toEqual([
      ["one", null],
      ["two", "m2"],
    ]);
  });

  it("shows a message queued elsewhere (another tab of the session)", () => {
    const state = reduce(emptyConversation(), queued("m9", "from the other tab"));
    expect(shown(state)).toEqual(["user:from the other tab:queued"]);
  });
});

describe("errors", () => {
  it("puts a reply's error on its message and drops the partial text", () => {
    let state = sendAndQueue(emptyConversation(), "m1", "x");
    state = run(
      state,
      token("m1", "part", "1-0"),
      event({
        type: "error",
        message_id: "m1",
        code: "llm_unavailable",
        detail: "model down",
        event_id: "1-1",
      }),
    );
    expect(shown(state)).toEqual(["user:x:queued"]);
    expect((state.items[0] as UserItem).error?.title).toMatch(/could not be reached/);
    expect(activeMessage(state)).toBeUndefined();
    // a token replayed later for it does not bring a reply back
    state = reduce(state, token("m1", "late", "2-0"));
    expect(shown(state)).toEqual(["user:x:queued"]);
  });

  it("refuses the oldest message in flight, which can then be sent again", () => {
    let state = run(emptyConversation(), compose("a".repeat(5000)));
    const key = state.items[0]?.key ?? "";
    state = run(
      state,
      { type: "sent", keys: [key] },
      event({
        type: "error",
        message_id: null,
        code: "message_too_long",
        detail: "the message has 5000 characters; at most 4000 are accepted",
      }),
    );
    const refused = state.items[0] as UserItem;
    expect(refused.status).toBe("refused");
    expect(refused.error).toEqual({
      code: "message_too_long",
      title: "That message is too long to send.",
      detail: "The message has 5000 characters; at most 4000 are accepted.",
    });
    state = reduce(state, { type: "retry", key });
    expect(state.items[0]).toMatchObject({ status: "waiting", error: undefined });
  });

  it("takes back a refusal that was an outage notice once the message is queued", () => {
    let state = run(emptyConversation(), compose("hello"));
    state = run(
      state,
      { type: "sent", keys: [state.items[0]?.key ?? ""] },
      event({ type: "error", message_id: null, code: "unavailable", detail: "outage" }),
    );
    expect(state.items[0]).toMatchObject({ status: "refused" });
    state = reduce(state, queued("m1", "hello"));
    expect(state.items).toHaveLength(1);
    expect(state.items[0]).toMatchObject({ status: "queued", id: "m1", error: undefined });
  });

  it("words an outage that concerns no message as such", () => {
    const state = reduce(
      emptyConversation(),
      event({ type: "error", message_id: null, code: "unavailable", detail: "the store is down" }),
    );
    expect(state.notices[0]).toMatchObject({
      title: "Parley cannot reach its store right now.",
      detail: "The store is down.",
    });
  });

  it("shows other errors as notices in words, which can be dismissed", () => {
    let state = reduce(
      emptyConversation(),
      event({ type: "error", message_id: null, code: "unknown_command", detail: "unknown 'stop'" }),
    );
    expect(state.notices).toHaveLength(1);
    expect(state.notices[0]?.title).toMatch(/does not know that command/);
    state = reduce(state, { type: "dismiss", key: state.notices[0]?.key ?? "" });
    expect(state.notices).toEqual([]);
  });

  it("words unknown codes too", () => {
    const state = reduce(
      emptyConversation(),
      event({ type: "error", message_id: null, code: "brand_new", detail: "what happened" }),
    );
    expect(state.notices[0]).toMatchObject({ title: "Something went wrong.", detail: "What happened." });
  });
});

describe("a dropped socket", () => {
  it("finds a message sent before the drop in history instead of sending it twice", () => {
    let state = run(emptyConversation(), compose("hello"));
    const key = state.items[0]?.key ?? "";
    state = run(state, { type: "sent", keys: [key] }, { type: "socketLost" });
    expect(state.items[0]).toMatchObject({ status: "unconfirmed" });
    state = reduce(state, view([user("m1", "hello")]));
    expect(state.items).toHaveLength(1);
    expect(state.items[0]).toMatchObject({ key, id: "m1", status: "queued" });
    expect(waitingToSend(state)).toEqual([]);
  });

  it("sends a message again when history does not have it", () => {
    let state = run(emptyConversation(), compose("lost"));
    const key = state.items[0]?.key ?? "";
    state = run(state, { type: "sent", keys: [key] }, { type: "socketLost" }, view([]));
    expect(waitingToSend(state).map((i) => i.key)).toEqual([key]);
  });

  it("keeps a reply in progress after its message, and its text, when history is loaded", () => {
    let state = sendAndQueue(emptyConversation(), "m1", "x");
    state = run(state, token("m1", "partial", "1-0"), compose("typed while away"));
    state = run(state, { type: "socketLost" }, view([user("m1", "x")]));
    expect(shown(state)).toEqual([
      "user:x:queued",
      "assistant:partial:streaming",
      "user:typed while away:waiting",
    ]);
    // resumed after the last event id: the rest of the reply
    state = run(state, token("m1", " rest", "1-1"), done("m1", "partial rest", "1-2"));
    expect((state.items[1] as ReplyItem).content).toBe("partial rest");
  });

  it("takes a reply finished while away from history; its replayed events change nothing", () => {
    let state = sendAndQueue(emptyConversation(), "m1", "x");
    state = run(state, token("m1", "par", "1-0"), { type: "socketLost" });
    const replyKey = state.items[1]?.key;
    state = reduce(state, view([user("m1", "x"), assistant("a1", "partial and more")]));
    state = run(state, token("m1", "tial", "1-1"), done("m1", "partial and more", "1-2"));
    expect(shown(state)).toEqual(["user:x:queued", "assistant:partial and more:done"]);
    expect(state.items[1]?.key).toBe(replyKey);
  });
});

describe("regenerate and edit", () => {
  const T2 = "2026-01-01T12:05:00.000Z";
  const revised = (
    id: string,
    message: ChatMessage,
    eventId: string,
    version: Version | undefined,
    count: number,
  ): Action =>
    event({
      type: "revised",
      message_id: id,
      message,
      ...(version === undefined ? {} : { version }),
      version_count: count,
      event_id: eventId,
    });
  const version = (content: string, reply: ChatMessage | null): Version => ({
    content,
    timestamp: T,
    reply,
  });
  const answered = () => run(sendAndQueue(emptyConversation(), "m1", "hi"), done("m1", "first", "1-0"));

  it("regenerate: the reply leaves the view, the new one streams in, the old is a version", () => {
    let state = answered();
    const earlier = version("hi", assistant("r-m1", "first"));
    state = reduce(state, revised("m1", user("m1", "hi"), "2-0", earlier, 1));
    expect(shown(state)).toEqual(["user:hi:queued"]);
    expect((state.items[0] as UserItem).versions).toEqual([earlier]);
    expect(activeMessage(state)?.id).toBe("m1");
    expect(revisableTurn(state)).toBeUndefined();

    state = run(state, token("m1", "sec", "2-1"), done("m1", "second", "2-2"));
    expect(shown(state)).toEqual(["user:hi:queued", "assistant:second:done"]);
    expect(revisableTurn(state)?.id).toBe("m1");
  });

  it("edit: the message takes its new text and time, the earlier text and reply are kept", () => {
    let state = answered();
    const message = { ...user("m1", "hello there"), timestamp: T2 };
    state = run(state, revised("m1", message, "2-0", version("hi", null), 1), done("m1", "again", "2-1"));
    expect(shown(state)).toEqual(["user:hello there:queued", "assistant:again:done"]);
    expect(state.items[0]).toMatchObject({ timestamp: T2, versions: [{ content: "hi", reply: null }] });
  });

  it("adds each revision's version to those the turn has, in order", () => {
    const v1 = version("hi", assistant("a1", "first"));
    const v2 = version("hi", assistant("a2", "second"));
    const history = [{ ...user("m1", "hi"), versions: [v1] }, assistant("a2", "second")];
    let state = reduce(emptyConversation(), view(history));
    state = run(state, revised("m1", user("m1", "hi"), "5-0", v2, 2), done("m1", "third", "5-1"));
    expect((state.items[0] as UserItem).versions).toEqual([v1, v2]);
    const v3 = version("hi", assistant("a3", "third"));
    state = reduce(state, revised("m1", user("m1", "hey"), "6-0", v3, 3));
    expect((state.items[0] as UserItem).versions).toEqual([v1, v2, v3]);
  });

  it("takes back a failed reply's error, so its new reply shows", () => {
    let state = sendAndQueue(emptyConversation(), "m1", "x");
    state = reduce(
      state,
      event({ type: "error", message_id: "m1", code: "llm_unavailable", detail: "", event_id: "1-0" }),
    );
    expect((state.items[0] as UserItem).error).toBeDefined();
    expect(revisableTurn(state)?.id).toBe("m1"); // a failed turn can be asked again
    // Nothing to keep: the revision has no version, and the turn still has none.
    state = run(state, revised("m1", user("m1", "x"), "2-0", undefined, 0), token("m1", "ok", "2-1"));
    expect((state.items[0] as UserItem).error).toBeUndefined();
    expect((state.items[0] as UserItem).versions).toEqual([]);
    expect(shown(state)).toEqual(["user:x:queued", "assistant:ok:streaming"]);
  });

  it("replays old done, revised, new done in order, and ends where history stands", () => {
    const v1 = version("hi", assistant("a1", "first"));
    const history = [{ ...user("m1", "hi"), versions: [v1] }, assistant("a2", "second")];
    let state = reduce(emptyConversation(), view(history));
    expect((state.items[0] as UserItem).versions).toEqual([v1]);
    // The socket opens after "0-0": every stored event of the session comes again.
    state = run(
      state,
      token("m1", "fir", "1-0"),
      done("m1", "first", "1-1"),
      revised("m1", user("m1", "hi"), "2-0", v1, 1),
      token("m1", "sec", "2-1"),
      done("m1", "second", "2-2"),
    );
    expect(shown(state)).toEqual(["user:hi:queued", "assistant:second:done"]);
    // History held that revision's version already: it is not added twice.
    expect((state.items[0] as UserItem).versions).toEqual([v1]);
    // Seen already: the same revised again changes nothing.
    expect(reduce(state, revised("m1", user("m1", "hi"), "2-0", v1, 1))).toBe(state);
  });

  it("is offered on the last turn only, and not while a reply is on its way", () => {
    let state = answered();
    state = sendAndQueue(state, "m2", "two");
    expect(revisableTurn(state)).toBeUndefined(); // m2 is being answered
    state = reduce(state, done("m2", "r2", "3-0"));
    expect(revisableTurn(state)?.id).toBe("m2");
    state = reduce(state, compose("typed, not sent"));
    expect(revisableTurn(state)).toBeUndefined();
  });

  it("ignores a revised event for a message not on the page", () => {
    const state = answered();
    expect(reduce(state, revised("m9", user("m9", "?"), "9-0", undefined, 0)).items).toBe(state.items);
  });

  it("reads revised events and versions from the wire, and refuses malformed ones", () => {
    const kept = version("old", assistant("a1", "r"));
    const none = { type: "revised", message_id: "m1", message: user("m1", "hi"), event_id: "2-0" };
    const frame = { ...none, version: kept, version_count: 1 };
    const parsed = (value: object) => parseEvent(JSON.stringify(value));
    expect(parsed(frame)).toEqual(frame);
    expect(parsed({ ...none, version_count: 0 })).toEqual({ ...none, version_count: 0 });
    const badVersion = { content: "old", timestamp: T, reply: "r" };
    expect(parsed({ ...frame, version: badVersion })).toBeNull();
    expect(parsed({ ...frame, version_count: "1" })).toBeNull();
    expect(parsed({ ...none, version: kept })).toBeNull(); // no count
    expect(parsed({ ...frame, message: assistant("a1", "r") })).toBeNull();
    expect(parsed({ ...frame, message: { ...user("m1", "hi"), versions: [badVersion] } })).toBeNull();
  });
});

describe("the models that wrote the replies", () => {
  const by = (message: ChatMessage, model: string): ChatMessage => ({ ...message, model });

  it("come from history, done events and earlier versions", () => {
    let state = run(
      emptyConversation(),
      view([
        {
          ...user("m1", "hi"),
          versions: [{ content: "hi", timestamp: T, reply: by(assistant("r0", "old"), "small") }],
        },
        by(assistant("r1", "Hello"), "small"),
      ]),
    );
    expect([...replyModels(state)]).toEqual(["small"]);
    state = sendAndQueue(state, "m2", "again");
    state = run(
      state,
      token("m2", "Hi", "1-0"),
      event({
        type: "done",
        message_id: "m2",
        reply: { ...by(assistant("r2", "Hi"), "large"), role: "assistant" },
        event_id: "1-1",
      }),
    );
    const replies = state.items.filter((i): i is ReplyItem => i.kind === "assistant");
    expect(replies.map((r) => r.model)).toEqual(["small", "large"]);
    expect(replyModels(state)).toEqual(new Set(["small", "large"]));
  });

  it("leave out a reply still streaming and one from a server that does not say", () => {
    let state = run(emptyConversation(), view([user("m1", "hi"), assistant("r1", "Hello")]));
    state = sendAndQueue(state, "m2", "again");
    state = run(state, token("m2", "Hi", "1-0"));
    expect(replyModels(state).size).toBe(0);
  });

  it("refuse a reply whose model is not a string", () => {
    const frame = {
      type: "done",
      message_id: "m1",
      reply: { ...assistant("r1", "Hello"), model: 3 },
      event_id: "1-0",
    };
    expect(parseEvent(JSON.stringify(frame))).toBeNull();
  });
});

describe("a message refused because its model is not served", () => {
  it("is marked refused, with what to do", () => {
    let state = reduce(emptyConversation(), compose("hello"));
    const key = state.items[0]?.key ?? "";
    state = run(
      state,
      { type: "sent", keys: [key] },
      event({ type: "error", message_id: null, code: "model_unavailable", detail: "no worker" }),
    );
    const item = state.items[0] as UserItem;
    expect(item.status).toBe("refused");
    expect(item.error?.title).toMatch(/Choose another model/);
    expect(state.notices).toEqual([]);
  });
});

describe("a resume past the events kept (a gap)", () => {
  const gap = (oldest: string): Action =>
    event({ type: "gap", oldest_event_id: oldest, detail: "events after 1-1 are gone" });

  it("drops the text streamed so far, and skips the tokens of the reply it cut until done", () => {
    let state = sendAndQueue(emptyConversation(), "m1", "one");
    state = run(state, token("m1", "Hel", "1-0"), token("m1", "lo", "1-1"));
    state = reduce(state, gap("9-0"));
    expect(shown(state)).toEqual(["user:one:queued"]); // its text has a hole
    expect(activeMessage(state)?.id).toBe("m1");
    // The replay starts mid-reply: its tail is not shown, its done is whole.
    state = run(state, token("m1", " wor", "9-0"), token("m1", "ld", "9-1"));
    expect(shown(state)).toEqual(["user:one:queued"]);
    expect(state.lastEventId).toBe("9-1");
    state = reduce(state, done("m1", "Hello world", "9-2"));
    expect(shown(state)).toEqual(["user:one:queued", "assistant:Hello world:done"]);
    // The next reply streams from its start.
    state = sendAndQueue(state, "m2", "two");
    state = run(state, token("m2", "Fr", "9-3"), token("m2", "om start", "9-4"));
    expect(shown(state).at(-1)).toBe("assistant:From start:streaming");
  });

  it("cuts no reply when the replay starts with the end or the restart of one", () => {
    let state = sendAndQueue(emptyConversation(), "m1", "one");
    state = run(state, gap("9-0"), done("m1", "Whole", "9-0"));
    state = sendAndQueue(state, "m2", "two");
    state = reduce(state, token("m2", "All", "9-1"));
    expect(shown(state).at(-1)).toBe("assistant:All:streaming");

    state = sendAndQueue(emptyConversation(), "m1", "one");
    state = run(
      state,
      gap("9-0"),
      token("m1", "tail", "9-0"),
      event({ type: "restart", message_id: "m1", event_id: "9-1" }),
      token("m1", "again", "9-2"),
    );
    expect(shown(state).at(-1)).toBe("assistant:again:streaming");
  });

  it("changes nothing when it names an event seen already", () => {
    let state = sendAndQueue(emptyConversation(), "m1", "one");
    state = run(state, token("m1", "Hel", "9-0"));
    expect(reduce(state, gap("9-0"))).toBe(state);
  });

  it("reads gap events from the wire, and refuses malformed ones", () => {
    const frame = { type: "gap", oldest_event_id: "9-0", detail: "gone" };
    expect(parseEvent(JSON.stringify(frame))).toEqual(frame);
    expect(parseEvent(JSON.stringify({ ...frame, oldest_event_id: 9 }))).toBeNull();
    expect(parseEvent(JSON.stringify({ type: "gap", detail: "gone" }))).toBeNull();
  });
});
