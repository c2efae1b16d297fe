import { useCallback, useEffect, useState } from "react";
import { httpApi, SessionGone, Unreachable, type Api } from "./api";
import { ChatView } from "./components/ChatView";
import { StartScreen } from "./components/StartScreen";
import type { SessionView } from "./protocol";
import { forgetSession, savedName, savedToken, saveSession } from "./storage";

type Phase =
  | { kind: "loading" }
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

export function App() {
  const [phase, setPhase] = useState<Phase>(() =>
    savedToken() === null ? { kind: "start" } : { kind: "loading" },
  );

  useEffect(() => {
    const token = savedToken();
    if (token === null) return;
    let current = true;
    void resume(token).then((next) => {
      if (current) setPhase(next);
    });
    return () => {
      current = false;
    };
  }, []);

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
                setPhase({ kind: "loading" });
                void resume(phase.token).then(setPhase);
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
