import { useCallback, useEffect, useState } from "react";
import { httpApi, SessionGone, Unreachable, type Api } from "./api";
import { ChatView } from "./components/ChatView";
import { LinkedSession } from "./components/LinkedSession";
import { StartScreen } from "./components/StartScreen";
import type { SessionView } from "./protocol";
import {
  forgetSession,
  linkedToken,
  savedName,
  storedName,
  storedToken,
  saveSession,
} from "./storage";

type Phase =
  | { kind: "loading"; token: string }
  | { kind: "confirm"; linked: string; stored: string | null }
  | { kind: "start"; notice?: string }
  | { kind: "unreachable"; token: string }
  | { kind: "chat"; view: SessionView };

const api: Api = httpApi();

/** What a failed REST call means to the person. */
function explain(error: unknown): string {
  if (error instanceof Unreachable) return "Parley cannot be reached. Is the server running?";
  if (error instanceof Error) return error.message;
  return "Something went wrong.";
}

/** The phase that continuing the session `token` leads to. */
async function resume(token: string): Promise<Phase> {
  try {
    const view = await api.refreshSession(token);
    saveSession(view.token, view.name);
    return { kind: "chat", view };
  } catch (e) {
    if (!(e instanceof SessionGone)) return { kind: "unreachable", token };
    forgetSession();
    return {
      kind: "start",
      notice: "Your last session has expired. Start a new one to chat again.",
    };
  }
}

/**
 * Where the page starts. A token in the URL that is not the one this browser keeps
 * (a link someone sent) is never taken silently: whoever made the link can read and
 * write that conversation, so the person is asked first (session fixation).
 */
function initialPhase(): Phase {
  const linked = linkedToken();
  const stored = storedToken();
  if (linked !== null && linked !== stored) return { kind: "confirm", linked, stored };
  const token = linked ?? stored;
  return token === null ? { kind: "start" } : { kind: "loading", token };
}

export function App() {
  const [phase, setPhase] = useState<Phase>(initialPhase);
  const loading = phase.kind === "loading" ? phase.token : null;

  useEffect(() => {
    if (loading === null) return;
    let current = true;
    void resume(loading).then((next) => {
      if (current) setPhase(next);
    });
    return () => {
      current = false;
    };
  }, [loading]);

  /** Start a session for `name`; resolves to an error message, or null when started. */
  const start = useCallback(async (name: string): Promise<string | null> => {
    try {
      const view = await api.createSession(name);
      saveSession(view.token, view.name);
      setPhase({ kind: "chat", view });
      return null;
    } catch (e) {
      return explain(e);
    }
  }, []);

  switch (phase.kind) {
    case "loading":
      return (
        <main className="center-screen" aria-busy="true">
          <p className="muted">Loading your conversation…</p>
        </main>
      );
    case "confirm":
      return (
        <LinkedSession
          currentName={phase.stored === null ? null : storedName()}
          onOpen={() => {
            setPhase({ kind: "loading", token: phase.linked });
          }}
          onKeep={() => {
            if (phase.stored !== null) {
              setPhase({ kind: "loading", token: phase.stored });
            } else {
              forgetSession();
              setPhase({ kind: "start" });
            }
          }}
        />
      );
    case "unreachable":
      return (
        <main className="center-screen">
          <div className="card" role="alert">
            <h1>Parley cannot be reached</h1>
            <p>The server did not answer. Check that it is running, then try again.</p>
            <button
              type="button"
              className="primary"
              onClick={() => {
                setPhase({ kind: "loading", token: phase.token });
              }}
            >
              Try again
            </button>
          </div>
        </main>
      );
    case "start":
      return <StartScreen initialName={savedName()} notice={phase.notice} onStart={start} />;
    case "chat":
      return (
        <ChatView
          key={phase.view.token}
          view={phase.view}
          api={api}
          onNewSession={start}
        />
      );
  }
}
