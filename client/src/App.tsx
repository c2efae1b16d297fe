import { useCallback, useEffect, useRef, useState } from "react";
import { httpApi, OwnerGone, SessionGone, Unreachable, type Api } from "./api";
import { idTokenHook, PERSON } from "./identity";
import { ChatView } from "./components/ChatView";
import { ConfirmDialog, type Confirmation } from "./components/ConfirmDialog";
import { LinkedSession } from "./components/LinkedSession";
import { Sidebar } from "./components/Sidebar";
import { StartScreen } from "./components/StartScreen";
import { conversationLabel, useConversationList } from "./conversationList";
import { exportFilename, saveFile } from "./download";
import { useNarrow } from "./media";
import { describeChoiceError, useCatalog } from "./models";
import type { ConversationSummary, ExportFormat, SessionChoice, SessionView } from "./protocol";
import {
  forgetOwner,
  forgetSession,
  linkedToken,
  saveOwner,
  savedName,
  storedName,
  storedOwner,
  storedToken,
  saveSession,
} from "./storage";

type Phase =
  | { kind: "loading"; token: string; fromList?: boolean }
  | { kind: "confirm"; linked: string; stored: string | null }
  | { kind: "start"; notice?: string }
  | { kind: "unreachable"; token: string }
  /** Between two conversations (one being deleted): nothing open. */
  | { kind: "busy" }
  | { kind: "chat"; view: SessionView };

const api: Api = httpApi();

/** After a reply the list is loaded again this long after (ms), for its message count;
 * and until an untitled conversation has its title, which the server gives it after its
 * first reply, in the background, also at the later times. */
const TITLE_CHECKS_MS = [1_000, 3_000, 8_000];

const SIDEBAR_ID = "conversations";

/** What a failed REST call means to the person. */
function explain(error: unknown): string {
  if (error instanceof Unreachable) return "Parley cannot be reached. Is the server running?";
  if (error instanceof Error) return error.message;
  return "Something went wrong.";
}

/** The phase that continuing the session `token` leads to. */
async function resume(token: string, fromList = false): Promise<Phase> {
  try {
    const view = await api.refreshSession(token);
    saveSession(view.token, view.name);
    return { kind: "chat", view };
  } catch (e) {
    if (!(e instanceof SessionGone)) return { kind: "unreachable", token };
    forgetSession();
    return {
      kind: "start",
      notice: fromList
        ? "That conversation has expired or was deleted. Start a new one to chat again."
        : "Your last session has expired. Start a new one to chat again.",
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
  // A page that signs people in (window.parleyIdToken) lists the person's conversations;
  // otherwise this browser's owner token does.
  const [owner, setOwner] = useState<string | null>(() =>
    idTokenHook() !== null ? PERSON : storedOwner(),
  );
  // An owner the server no longer knows (it expired) is forgotten: the next new
  // conversation makes another.
  const ownerGone = useCallback(() => {
    forgetOwner();
    setOwner(null);
  }, []);
  const conversations = useConversationList(api, owner, ownerGone);
  const { list, refresh } = conversations;
  const catalog = useCatalog(api);
  const narrow = useNarrow();
  const [drawerOpen, setDrawerOpen] = useState(false);
  const [confirmation, setConfirmation] = useState<Confirmation | null>(null);
  const [creating, setCreating] = useState(false);
  /** Why the last delete failed, if it did. */
  const [listNotice, setListNotice] = useState<string | null>(null);
  const loading = phase.kind === "loading" ? phase : null;
  const current =
    phase.kind === "chat" ? phase.view.token : phase.kind === "loading" ? phase.token : null;
  const currentSummary = list.items.find((c) => c.token === current);
  // The open conversation is in no list of this browser's: started before lists
  // existed, or opened from a link. It keeps working; nothing adopts it.
  const unlisted =
    phase.kind === "chat" && currentSummary === undefined && (owner === null || list.complete)
      ? { name: phase.view.name }
      : null;

  useEffect(() => {
    if (loading === null) return;
    let live = true;
    void resume(loading.token, loading.fromList).then((next) => {
      if (live) setPhase(next);
    });
    return () => {
      live = false;
    };
  }, [loading]);

  // The list is loaded again whenever it comes into view: the page comes back to the
  // front, or the drawer opens.
  useEffect(() => {
    const onVisible = () => {
      if (document.visibilityState === "visible") refresh();
    };
    document.addEventListener("visibilitychange", onVisible);
    return () => {
      document.removeEventListener("visibilitychange", onVisible);
    };
  }, [refresh]);

  // After a reply, a few loads until the open conversation has its title.
  const titleChecks = useRef<ReturnType<typeof setTimeout>[]>([]);
  const untitled = currentSummary !== undefined && currentSummary.title === "";
  const onReplyDone = useCallback(() => {
    for (const timer of titleChecks.current) clearTimeout(timer);
    const checks = untitled ? TITLE_CHECKS_MS : TITLE_CHECKS_MS.slice(0, 1);
    titleChecks.current = checks.map((ms) => setTimeout(refresh, ms));
  }, [untitled, refresh]);
  useEffect(
    () => () => {
      for (const timer of titleChecks.current) clearTimeout(timer);
    },
    [],
  );

  /**
   * The signed-in person, if the page signs people in; else this browser's owner token,
   * made on first use (kept, not yet listed: see start).
   */
  async function ensureOwner(renew = false): Promise<string> {
    if (idTokenHook() !== null) return PERSON;
    if (owner !== null && owner !== PERSON && !renew) return owner;
    const made = await api.createOwner();
    saveOwner(made);
    return made;
  }

  /**
   * Start a conversation for `name`, with the model and system prompt of `choice`;
   * resolves to an error message, or null when started.
   */
  async function start(name: string, choice: SessionChoice = {}): Promise<string | null> {
    setCreating(true);
    try {
      let view: SessionView;
      let listOwner = await ensureOwner();
      try {
        view = await api.createSession(name, listOwner, choice);
      } catch (e) {
        if (!(e instanceof OwnerGone)) throw e;
        listOwner = await ensureOwner(true);
        view = await api.createSession(name, listOwner, choice);
      }
      saveSession(view.token, view.name);
      // A new owner's list is loaded once its first conversation exists, so it holds it.
      setOwner(listOwner);
      conversations.added(view);
      setPhase({ kind: "chat", view });
      setDrawerOpen(false);
      return null;
    } catch (e) {
      return describeChoiceError(e);
    } finally {
      setCreating(false);
    }
  }

  /** Leave the open conversation for `next`, after asking if it is in no list. */
  function leave(next: () => void) {
    if (unlisted === null) {
      next();
      return;
    }
    setConfirmation({
      title: "Leave this conversation?",
      body: (
        <p>
          It is not in your list of conversations (it was started before the list existed, or
          opened from a link), so once you leave it only its link brings it back. Keep the
          page&apos;s address if you want to return to it.
        </p>
      ),
      confirmLabel: "Leave it",
      cancelLabel: "Stay",
      onConfirm: next,
    });
  }

  function select(token: string) {
    if (token === current) {
      setDrawerOpen(false);
      return;
    }
    leave(() => {
      setDrawerOpen(false);
      setPhase({ kind: "loading", token, fromList: true });
    });
  }

  function newConversation() {
    const name = phase.kind === "chat" ? phase.view.name : savedName();
    leave(() => {
      if (name) {
        void start(name).then((error) => {
          if (error !== null) setPhase({ kind: "start", notice: error });
        });
      } else {
        setDrawerOpen(false);
        forgetSession();
        setPhase({ kind: "start" });
      }
    });
  }

  async function rename(token: string, title: string): Promise<string | null> {
    try {
      await api.renameSession(token, title);
      conversations.renamed(token, title.trim());
      return null;
    } catch (e) {
      if (e instanceof SessionGone) refresh();
      return explain(e);
    }
  }

  function askDelete(conversation: ConversationSummary) {
    setConfirmation({
      title: `Delete “${conversationLabel(conversation)}”?`,
      body: <p>Its messages are deleted for good, for everyone who has its link.</p>,
      confirmLabel: "Delete",
      onConfirm: () => void remove(conversation.token),
    });
  }

  async function remove(token: string) {
    const wasOpen = token === current;
    // The open conversation is closed first: its socket would only hear that it ended.
    if (wasOpen) setPhase({ kind: "busy" });
    try {
      await api.deleteSession(token);
      setListNotice(null);
    } catch (e) {
      if (!(e instanceof SessionGone)) {
        setListNotice(`The conversation could not be deleted: ${explain(e)}`);
        if (wasOpen) setPhase({ kind: "loading", token });
        return;
      }
    }
    conversations.removed(token);
    refresh();
    if (!wasOpen) return;
    const next = list.items.find((c) => c.token !== token);
    if (next !== undefined) {
      setPhase({ kind: "loading", token: next.token, fromList: true });
    } else {
      forgetSession();
      setPhase({ kind: "start", notice: "The conversation was deleted." });
    }
  }

  async function exportConversation(format: ExportFormat, name: string): Promise<string | null> {
    if (phase.kind !== "chat") return null;
    try {
      const file = await api.exportSession(phase.view.token, format);
      const title = currentSummary?.title ?? "";
      saveFile(file.blob, exportFilename(title, name, phase.view.session_start, format));
      return null;
    } catch (e) {
      return `The conversation could not be exported: ${explain(e)}`;
    }
  }

  const dialog = confirmation !== null && (
    <ConfirmDialog
      {...confirmation}
      onClose={() => {
        setConfirmation(null);
      }}
    />
  );

  switch (phase.kind) {
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
      return (
        <StartScreen
          initialName={savedName()}
          notice={phase.notice}
          models={catalog.models}
          onStart={start}
        />
      );
    case "loading":
    case "busy":
    case "chat": {
      const drawer = narrow;
      return (
        <div className="app" data-drawer={drawer ? (drawerOpen ? "open" : "closed") : "none"}>
          <Sidebar
            id={SIDEBAR_ID}
            list={list}
            notice={listNotice}
            current={current}
            unlisted={unlisted}
            drawer={drawer}
            open={drawerOpen}
            onClose={() => {
              setDrawerOpen(false);
            }}
            onNew={newConversation}
            creating={creating}
            onSelect={select}
            onRename={rename}
            onDelete={askDelete}
            onLoadMore={conversations.loadMore}
          />
          <main className="main" inert={drawer && drawerOpen}>
            {phase.kind === "chat" ? (
              <ChatView
                key={phase.view.token}
                view={phase.view}
                api={api}
                models={catalog.models}
                title={currentSummary?.title ?? ""}
                onNewSession={start}
                onReplyDone={onReplyDone}
                onExport={exportConversation}
                drawer={
                  drawer
                    ? {
                        id: SIDEBAR_ID,
                        open: drawerOpen,
                        onOpen: () => {
                          setDrawerOpen(true);
                          refresh();
                        },
                      }
                    : null
                }
              />
            ) : (
              <div className="center-screen" aria-busy="true">
                <p className="muted">Loading your conversation…</p>
              </div>
            )}
          </main>
          {dialog}
        </div>
      );
    }
  }
}
