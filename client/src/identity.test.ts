import { afterEach, describe, expect, it, vi } from "vitest";
import { httpApi } from "./api";
import { idTokenHook, NotSignedIn, pageIdToken, PERSON, socketProtocols } from "./identity";

afterEach(() => {
  vi.unstubAllGlobals();
});

describe("the page's ID token hook", () => {
  it("is a function the page sets, or none", () => {
    const hook = () => "jwt";
    expect(idTokenHook({ parleyIdToken: hook })).toBe(hook);
    expect(idTokenHook({ parleyIdToken: "jwt" })).toBeNull(); // a function, not a token
    expect(idTokenHook({})).toBeNull();
  });

  it("gives the token, whether at once or as a promise; null when there is none or it fails", async () => {
    expect(await pageIdToken(() => "a.b.c")).toBe("a.b.c");
    expect(await pageIdToken(() => Promise.resolve("d.e.f"))).toBe("d.e.f");
    expect(await pageIdToken(() => null)).toBeNull();
    expect(await pageIdToken(() => "")).toBeNull();
    expect(await pageIdToken(null)).toBeNull();
    const warn = vi.spyOn(console, "warn").mockImplementation(() => undefined);
    expect(await pageIdToken(() => Promise.reject(new Error("a.secret.token")))).toBeNull();
    expect(JSON.stringify(warn.mock.calls)).not.toContain("a.secret.token");
    warn.mockRestore();
  });

  it("goes in the socket's subprotocols", () => {
    expect(socketProtocols("a.b.c")).toEqual(["parley", "parley.bearer.a.b.c"]);
    expect(socketProtocols(null)).toBeUndefined();
  });
});

describe("the person as owner", () => {
  it("sends the page's current ID token as Bearer, never in the URL", async () => {
    const fetch = vi.fn(() =>
      Promise.resolve(
        new Response(JSON.stringify({ conversations: [], total: 0, next_offset: null }), {
          status: 200,
        }),
      ),
    );
    vi.stubGlobal("fetch", fetch);
    const api = httpApi("", () => Promise.resolve("id.token.now"));
    await api.listConversations(PERSON, 0, 20);
    const [url, init] = fetch.mock.calls[0] as unknown as [string, RequestInit];
    expect(url).toBe("/conversations?offset=0&limit=20");
    expect((init.headers as Record<string, string>).Authorization).toBe("Bearer id.token.now");
  });

  it("asks nothing of the server when nobody is signed in", async () => {
    const fetch = vi.fn();
    vi.stubGlobal("fetch", fetch);
    const api = httpApi("", () => Promise.resolve(null));
    await expect(api.createSession("Ada", PERSON)).rejects.toBeInstanceOf(NotSignedIn);
    expect(fetch).not.toHaveBeenCalled();
  });
});
