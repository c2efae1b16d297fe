import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { SessionGone, Unreachable, type Api } from "./api";
import type { ReplyItem } from "./conversation";
import type { ChatMessage, ServerEvent, SessionView } from "./protocol";
import { backoffDelay, ChatSession, type SocketLike } from "./session";

const T = "2026-01-01T12:00:00.000Z";

/** A WebSocket the test drives: open it, push frames, drop it. */
class FakeSocket implements SocketLike {
  readyState = 0;
  sent: string[] = [];
  closedWith: number | null = null;
  onopen: ((event: Event) => void) | null = null;
  onmessage: ((event: MessageEvent) => void) | null = null;
  onclose: ((event: CloseEvent) => void) | null = null;
  onerror: ((event: Event) => void) | null = null;

  constructor(
    readonly url: string,
    readonly protocols?: string[],
  ) {}

  get params(): URLSearchParams {
    return new URL(this.url).searchParams;
  }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(data);
  }

  close(code = 1000): void {
    this.closedWith = code;
    this.drop(code);
  }

  open(): void {
    this.readyState = 1;
    this.onopen?.(new Event("open"));
  }

  receive(event: ServerEvent): void {
    this.onmessage?.({ data: JSON.stringify(event) } as MessageEvent);
  }

  drop(code = 1006): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code } as CloseEvent);
  }
}

const userMessage = (id: string, content: string): ChatMessage => ({
  id,
  role: "user",
  content,
  timestamp: T,
});

const sessionView = (messages: ChatMessage[] = []): SessionView => ({
  token: "tok",
  name: "Ada",
  session_start: T,
  messages,
});

interface Harness {
  session: ChatSession;
  sockets: FakeSocket[];
  refresh: ReturnType<typeof vi.fn<Api["refreshSession"]>>;
  /** The newest socket. */
  socket: () => FakeSocket;
}

function harness(
  history: ChatMessage[] = [],
  idToken?: () => Promise<string | null>,
): Harness {
  const sockets: FakeSocket[] = [];
  const refresh = vi.fn<Api["refreshSession"]>();
  refresh.mockResolvedValue(sessionView(history));
  const api: Pick<Api, "refreshSession"> = { refreshSession: refresh };
  const session = new ChatSession(sessionView(history), {
    api,
    socketBase: "ws://parley.test",
    idToken,
    openSocket: (url, protocols) => {
      const socket = new FakeSocket(url, protocols);
      sockets.push(socket);
      return socket;
    },
    backoff: { initialMs: 1000, maxMs: 8000 },
    random: () => 0.5, // no jitter: delays are exactly initial * 2^attempt
    now: () => Date.now(),
  });
  return {
    session,
    sockets,
    refresh,
    socket: () => {
      const last = sockets.at(-1);
      if (last === undefined) throw new Error("no socket opened");
      return last;
    },
  };
}

const sentFrames = (socket: FakeSocket) => socket.sent.map((s) => JSON.parse(s) as unknown);
const replyText = (session: ChatSession) =>
  session
    .getState()
    .conversation.items.filter((i): i is ReplyItem => i.kind === "assistant")
    .map((i) => i.content);

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("backoffDelay", () => {
  it("doubles from the initial delay up to the maximum, jittered by at most 20%", () => {
    const backoff = { initialMs: 500, maxMs: 4000 };
    expect([0, 1, 2, 3, 4, 10].map((a) => backoffDelay(backoff, a, 0.5))).toEqual([
      500, 1000, 2000, 4000, 4000, 4000,
    ]);
    expect(backoffDelay(backoff, 0, 0)).toBe(400);
    expect(backoffDelay(backoff, 0, 0.999999)).toBe(600);
  });
});

describe("ChatSession", () => {
  it("keeps the session's model and prompt: from the view, from a change, from a reload", async () => {
    const h = harness();
    expect(h.session.getState()).toMatchObject({ model: null, systemPrompt: "" });
    h.session.start();
    h.socket().open();
    h.session.chose({ model: "large", system_prompt: "  Be terse.  " });
    expect(h.session.getState()).toMatchObject({ model: "large", systemPrompt: "Be terse." });
    h.session.chose({ system_prompt: "" });
    expect(h.session.getState()).toMatchObject({ model: "large", systemPrompt: "" });

    // Another tab changed them: the history loaded before the next socket says so.
    h.refresh.mockResolvedValue({ ...sessionView(), model: "small", system_prompt: "Rhyme." });
    h.socket().drop(1001);
    await vi.advanceTimersByTimeAsync(1000);
    expect(h.session.getState()).toMatchObject({ model: "small", systemPrompt: "Rhyme." });
  });

  it("offers the page's ID token on each socket, and reconnects with a fresh one when it expires", async () => {
    const tokens = ["jwt.one.a", "jwt.two.b"];
    const h = harness([], () => Promise.resolve(tokens.shift() ?? null));
    h.session.start();
    await vi.advanceTimersByTimeAsync(0); // the page's hook answers
    expect(h.socket().protocols).toEqual(["parley", "parley.bearer.jwt.one.a"]);
    expect(h.socket().url).not.toContain("jwt"); // never in the URL
    h.socket().open();

    h.socket().receive({ type: "error", message_id: null, code: "auth_expired", detail: "expired" });
    h.socket().drop(1008); // closed as a bad token would be, yet the session lives on
    expect(h.session.getState().connection.kind).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(1000);
    expect(h.sockets).toHaveLength(2);
    expect(h.socket().protocols).toEqual(["parley", "parley.bearer.jwt.two.b"]);
  });

  it("offers no subprotocol without a page that signs people in", () => {
    const h = harness();
    h.session.start();
    expect(h.socket().protocols).toBeUndefined();
  });

  it("opens the socket replaying from the start and sends what was typed before it opened", () => {
    const h = harness();
    h.session.start();
    expect(h.session.getState().connection.kind).toBe("connecting");
    expect(h.socket().url).toBe("ws://parley.test/chat?token=tok&after=0-0");

    h.session.send("early bird");
    expect(h.socket().sent).toEqual([]);
    h.socket().open();
    expect(h.session.getState().connection.kind).toBe("open");
    expect(sentFrames(h.socket())).toEqual([{ type: "message", content: "early bird" }]);

    h.session.send("   ");
    expect(h.socket().sent).toHaveLength(1); // blank text is not sent
  });

  it("reconnects with backoff after a drop and resumes the reply after the last event id", async () => {
    const h = harness();
    h.session.start();
    h.socket().open();
    h.session.send("hello");
    h.socket().receive({ type: "queued", message_id: "m1", message: userMessage("m1", "hello") });
    h.socket().receive({ type: "token", message_id: "m1", content: "Hi ", event_id: "10-0" });
    h.socket().receive({ type: "token", message_id: "m1", content: "the", event_id: "10-1" });

    h.socket().drop(1001); // the server went away mid-reply
    const state = h.session.getState();
    expect(state.connection).toMatchObject({ kind: "reconnecting", attempt: 1 });
    expect(replyText(h.session)).toEqual(["Hi the"]);

    h.refresh.mockResolvedValue(sessionView([userMessage("m1", "hello")]));
    await vi.advanceTimersByTimeAsync(999);
    expect(h.sockets).toHaveLength(1); // still waiting out the backoff
    await vi.advanceTimersByTimeAsync(1);
    expect(h.refresh).toHaveBeenCalledWith("tok");
    expect(h.sockets).toHaveLength(2);
    expect(h.socket().params.get("after")).toBe("10-1");

    h.socket().open();
    // the server replays from after 10-1: the rest of the reply, then done
    h.socket().receive({ type: "token", message_id: "m1", content: "re", event_id: "10-2" });
    h.socket().receive({
      type: "done",
      message_id: "m1",
      reply: { id: "a1", role: "assistant", content: "Hi there", timestamp: T },
      event_id: "10-3",
    });
    expect(replyText(h.session)).toEqual(["Hi there"]);
    expect(h.session.getState().conversation.items).toHaveLength(2);
    expect(sentFrames(h.sockets[1] as FakeSocket)).toEqual([]); // "hello" was not sent twice
  });

  it("loads the history again when the server says a resume went past the events kept", async () => {
    const h = harness([userMessage("m1", "hello")]);
    h.session.start();
    h.socket().open();
    h.socket().receive({ type: "token", message_id: "m1", content: "Hi ", event_id: "10-0" });
    h.socket().drop(1001);
    // Away meanwhile: m1 was answered, and another tab's m2 too.
    const answered = (id: string, reply: string): ChatMessage[] => [
      userMessage(id, id),
      { id: `r-${id}`, role: "assistant", content: reply, timestamp: T },
    ];
    h.refresh.mockResolvedValue(sessionView([userMessage("m1", "hello")]));
    await vi.advanceTimersByTimeAsync(1000);
    expect(h.refresh).toHaveBeenCalledTimes(1);
    h.socket().open();
    const history = [...answered("m1", "Hi there"), ...answered("m2", "Yes")];
    h.refresh.mockResolvedValue(sessionView(history));
    h.socket().receive({ type: "gap", oldest_event_id: "20-0", detail: "after 10-0: gone" });
    expect(replyText(h.session)).toEqual([]); // the text streamed had a hole
    await vi.advanceTimersByTimeAsync(0);
    expect(h.refresh).toHaveBeenCalledTimes(2);
    expect(replyText(h.session)).toEqual(["Hi there", "Yes"]);
    // The socket carries on: a replayed done changes nothing, a live reply streams.
    h.socket().receive({
      type: "done",
      message_id: "m2",
      reply: { id: "r-m2", role: "assistant", content: "Yes", timestamp: T },
      event_id: "20-0",
    });
    h.session.send("more");
    h.socket().receive({ type: "queued", message_id: "m3", message: userMessage("m3", "more") });
    h.socket().receive({ type: "token", message_id: "m3", content: "Sure", event_id: "21-0" });
    expect(replyText(h.session)).toEqual(["Hi there", "Yes", "Sure"]);
    expect(h.session.getState().connection.kind).toBe("open");
    expect(h.sockets).toHaveLength(2);
  });

  it("doubles the wait while the server stays down, and starts over once connected", async () => {
    const h = harness();
    h.session.start();
    h.socket().open();
    h.refresh.mockRejectedValue(new Unreachable("down"));
    h.socket().drop();

    const retryDelays: number[] = [];
    for (let i = 0; i < 4; i++) {
      const connection = h.session.getState().connection;
      if (connection.kind !== "reconnecting" || connection.retryAt === null) throw new Error("no retry");
      retryDelays.push(connection.retryAt - Date.now());
      await vi.advanceTimersByTimeAsync(connection.retryAt - Date.now());
    }
    expect(retryDelays).toEqual([1000, 2000, 4000, 8000]);
    expect(h.sockets).toHaveLength(1);

    h.refresh.mockResolvedValue(sessionView());
    await vi.advanceTimersByTimeAsync(8000);
    expect(h.sockets).toHaveLength(2);
    h.socket().open();
    h.socket().drop();
    expect(h.session.getState().connection).toMatchObject({ attempt: 1 });
  });

  it("keeps messages typed while reconnecting and sends them, in order, when back", async () => {
    const h = harness();
    h.session.start();
    h.socket().open();
    h.socket().drop();
    h.session.send("one");
    h.session.send("two");
    const statuses = () =>
      h.session.getState().conversation.items.map((i) => (i.kind === "user" ? i.status : ""));
    expect(statuses()).toEqual(["waiting", "waiting"]);
    await vi.advanceTimersByTimeAsync(1000);
    h.socket().open();
    expect(sentFrames(h.socket())).toEqual([
      { type: "message", content: "one" },
      { type: "message", content: "two" },
    ]);
    expect(statuses()).toEqual(["sending", "sending"]);
  });

  it("sends again a message lost with the socket, found missing from history", async () => {
    const h = harness();
    h.session.start();
    h.socket().open();
    h.session.send("into the void");
    h.socket().drop(); // before any acknowledgement
    h.refresh.mockResolvedValue(sessionView([]));
    await vi.advanceTimersByTimeAsync(1000);
    h.socket().open();
    expect(sentFrames(h.socket())).toEqual([{ type: "message", content: "into the void" }]);
  });

  it("stops reconnecting when the session expired (history says so)", async () => {
    const h = harness();
    h.session.start();
    h.socket().open();
    h.refresh.mockRejectedValue(new SessionGone());
    h.socket().drop(); // e.g. a handshake refused with 403 looks like this to a browser
    await vi.advanceTimersByTimeAsync(1000);
    expect(h.session.getState().connection.kind).toBe("expired");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(h.sockets).toHaveLength(1);
    h.session.send("anyone?");
    expect(h.session.getState().conversation.items).toEqual([]);
  });

  it("stops reconnecting on session_expired and close 1008", async () => {
    const h = harness();
    h.session.start();
    h.socket().open();
    h.socket().receive({
      type: "error",
      message_id: null,
      code: "session_expired",
      detail: "Session expired or does not exist",
    });
    h.socket().drop(1008);
    expect(h.session.getState().connection.kind).toBe("expired");
    expect(h.session.getState().conversation.notices).toEqual([]); // shown as the banner
    await vi.advanceTimersByTimeAsync(60_000);
    expect(h.sockets).toHaveLength(1);
    expect(h.refresh).not.toHaveBeenCalled();
  });

  it("sends stop for the reply in progress and shows it as stopping until it ends", () => {
    const h = harness();
    h.session.start();
    h.socket().open();
    h.session.stop(); // nothing in progress: nothing sent
    expect(h.socket().sent).toEqual([]);
    h.session.send("long story");
    h.socket().receive({ type: "queued", message_id: "m1", message: userMessage("m1", "long story") });
    h.socket().receive({ type: "token", message_id: "m1", content: "Once", event_id: "1-0" });
    h.session.stop();
    expect(sentFrames(h.socket()).at(-1)).toEqual({ type: "stop" });
    expect(h.session.getState().stopping).toBe("m1");
    h.socket().receive({
      type: "done",
      message_id: "m1",
      reply: { id: "a1", role: "assistant", content: "Once", timestamp: T, stopped: true },
      event_id: "1-1",
    });
    expect(h.session.getState().stopping).toBeNull();
    const reply = h.session.getState().conversation.items[1];
    expect(reply).toMatchObject({ content: "Once", stopped: true, streaming: false });
  });

  it("lets the person stop again when the server could not act on a stop", () => {
    const h = harness();
    h.session.start();
    h.socket().open();
    h.session.send("long story");
    h.socket().receive({ type: "queued", message_id: "m1", message: userMessage("m1", "long story") });
    h.session.stop();
    expect(h.session.getState().stopping).toBe("m1");
    h.socket().receive({
      type: "error",
      message_id: null,
      code: "unavailable",
      detail: "the stop could not be sent; retry",
    });
    expect(h.session.getState().stopping).toBeNull();
  });

  it("does not reconnect once disposed", async () => {
    const h = harness();
    h.session.start();
    h.socket().open();
    h.session.dispose();
    expect(h.socket().closedWith).toBe(1000);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(h.sockets).toHaveLength(1);
    expect(h.session.getState().connection.kind).toBe("closed");
  });

  it("retries at once when asked", async () => {
    const h = harness();
    h.session.start();
    h.socket().open();
    h.socket().drop();
    h.session.retryNow();
    await vi.advanceTimersByTimeAsync(0);
    expect(h.sockets).toHaveLength(2);
  });

  it("ignores frames that are not events", () => {
    const h = harness();
    const warn = vi.spyOn(console, "warn").mockImplementation(() => undefined);
    h.session.start();
    h.socket().open();
    h.socket().onmessage?.({ data: "not json" } as MessageEvent);
    h.socket().onmessage?.({ data: '{"type":"token"}' } as MessageEvent);
    expect(h.session.getState().conversation.items).toEqual([]);
    expect(warn).toHaveBeenCalledTimes(2);
  });
});

describe("regenerate and edit", () => {
  const answered = (): ChatMessage[] => [
    userMessage("m1", "hello"),
    { id: "a1", role: "assistant", content: "hi", timestamp: T },
  ];

  it("send their command for the last turn, once, until the server answers", () => {
    const h = harness(answered());
    h.session.start();
    h.session.regenerate(); // not connected: nothing can be sent
    h.socket().open();
    h.session.regenerate();
    h.session.regenerate(); // waiting for the first one's answer
    expect(sentFrames(h.socket())).toEqual([{ type: "regenerate" }]);
    expect(h.session.getState().revising).toBe("m1");

    h.socket().receive({
      type: "revised",
      message_id: "m1",
      message: userMessage("m1", "hello"),
      version: { content: "hello", timestamp: T, reply: null },
      version_count: 1,
      event_id: "5-0",
    });
    expect(h.session.getState().revising).toBeNull();
    expect(replyText(h.session)).toEqual([]); // the new reply is on its way
    h.session.edit("m1", "changed"); // not while it is
    expect(h.socket().sent).toHaveLength(1);
  });

  it("edit names the message; a refusal ends the wait and is shown in words", () => {
    const h = harness(answered());
    h.session.start();
    h.socket().open();
    h.session.edit("m0", "not the last one");
    h.session.edit("m1", "   ");
    expect(h.socket().sent).toEqual([]);
    h.session.edit("m1", "hello again");
    expect(sentFrames(h.socket())).toEqual([
      { type: "edit", message_id: "m1", content: "hello again" },
    ]);
    // The server refuses a revision with no message id: it ends no reply.
    h.socket().receive({
      type: "error",
      message_id: null,
      code: "too_many_versions",
      detail: "at most 20",
    });
    const state = h.session.getState();
    expect(state.revising).toBeNull();
    expect(state.conversation.notices[0]).toMatchObject({ code: "too_many_versions" });
    expect(replyText(h.session)).toEqual(["hi"]); // nothing changed
  });

  it("a dropped socket ends the wait (history tells what happened)", () => {
    const h = harness(answered());
    h.session.start();
    h.socket().open();
    h.session.regenerate();
    h.socket().drop();
    expect(h.session.getState().revising).toBeNull();
  });
});
