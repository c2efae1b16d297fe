import { useEffect, useRef, useState, useSyncExternalStore } from "react";
import { pageSocketBase, type Api } from "../api";
import { idTokenHook, pageIdToken } from "../identity";
import { activeMessage, replyModels, revisableTurn, type Conversation } from "../conversation";
import { describeChoiceError, modelLabel, sessionModel } from "../models";
import type { ExportFormat, ModelInfo, SessionChoice, SessionView } from "../protocol";
import { ChatSession, type ConnectionStatus } from "../session";
import { Composer } from "./Composer";
import { ExportMenu } from "./ExportMenu";
import { MenuIcon } from "./Icons";
import { MessageList } from "./MessageList";
import { SettingsDialog } from "./SettingsDialog";

interface Props {
  view: SessionView;
  api: Pick<Api, "refreshSession" | "changeSession">;
  /** The models on offer (empty until loaded). */
  models: ModelInfo[];
  /** The conversation's title ("" until it has one). */
  title: string;
  /** Start a new session with this name; resolves to an error to show, or null. */
  onNewSession: (name: string) => Promise<string | null>;
  /** A reply ended (the server may title the conversation soon after). */
  onReplyDone: () => void;
  /** Save the conversation as a file; resolves to an error to show, or null. */
  onExport: (format: ExportFormat, name: string) => Promise<string | null>;
  /** The sidebar is a drawer (narrow page): the button that shows it, and its state. */
  drawer: { id: string; open: boolean; onOpen: () => void } | null;
}

/** Replies that have ended, counted to notice the next one. */
const finishedReplies = (conversation: Conversation): number =>
  conversation.items.filter((i) => i.kind === "assistant" && !i.streaming).length;

/** Seconds until `at`, re-rendered every second while `at` is set. */
function useSecondsUntil(at: number | null): number | null {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (at === null) return;
    const timer = setInterval(() => {
      setNow(Date.now());
    }, 250);
    return () => {
      clearInterval(timer);
    };
  }, [at]);
  return at === null ? null : Math.max(0, Math.ceil((at - now) / 1000));
}

const CONNECTION_LABELS: Record<ConnectionStatus["kind"], string> = {
  connecting: "Connecting…",
  open: "Connected",
  reconnecting: "Reconnecting…",
  expired: "Session expired",
  closed: "Closed",
};

export function ChatView({
  view,
  api,
  models,
  title,
  onNewSession,
  onReplyDone,
  onExport,
  drawer,
}: Props) {
  const [session] = useState(
    () =>
      new ChatSession(view, {
        api,
        socketBase: pageSocketBase(),
        // On a page that signs people in, each socket proves the person.
        idToken: idTokenHook() !== null ? () => pageIdToken() : undefined,
      }),
  );
  const state = useSyncExternalStore(session.subscribe, session.getState);
  const [newSessionError, setNewSessionError] = useState<string | null>(null);
  const [startingNew, setStartingNew] = useState(false);
  const [settingsOpen, setSettingsOpen] = useState(false);

  useEffect(() => {
    session.start();
    window.addEventListener("online", session.retryNow);
    return () => {
      window.removeEventListener("online", session.retryNow);
      session.dispose();
    };
  }, [session]);

  const { connection, conversation } = state;
  const active = activeMessage(conversation);
  const expired = connection.kind === "expired";
  const retryAt = connection.kind === "reconnecting" ? connection.retryAt : null;
  const secondsLeft = useSecondsUntil(retryAt);
  const composer = useRef<HTMLDivElement>(null);
  // A drawer that closes gives the focus back to the button that opened it.
  const drawerToggle = useRef<HTMLButtonElement>(null);
  const drawerOpen = drawer?.open ?? false;
  const wasOpen = useRef(drawerOpen);
  useEffect(() => {
    if (wasOpen.current && !drawerOpen) drawerToggle.current?.focus();
    wasOpen.current = drawerOpen;
  }, [drawerOpen]);
  const revisable =
    connection.kind === "open" && state.revising === null
      ? (revisableTurn(conversation)?.id ?? null)
      : null;

  const finished = finishedReplies(conversation);
  const seenFinished = useRef(finished);
  useEffect(() => {
    if (finished > seenFinished.current) onReplyDone();
    seenFinished.current = finished;
  }, [finished, onReplyDone]);

  /** The composer takes the focus from a button that is about to go away. */
  function focusComposer() {
    composer.current?.querySelector("textarea")?.focus();
  }

  const model = sessionModel(models, state.model);
  const label = model === null ? "…" : modelLabel(models, model);
  // Which model wrote each reply is worth saying only once there were several.
  const usedModels = replyModels(conversation);
  if (model !== null && usedModels.size > 0) usedModels.add(model);
  const replyModelLabel =
    usedModels.size > 1 ? (id: string) => modelLabel(models, id) : null;

  async function saveSettings(choice: SessionChoice): Promise<string | null> {
    try {
      await api.changeSession(state.token, choice);
    } catch (e) {
      return describeChoiceError(e);
    }
    session.chose(choice);
    return null;
  }

  async function startNew() {
    setStartingNew(true);
    setNewSessionError(await onNewSession(state.name));
    setStartingNew(false);
  }

  return (
    <div className="chat" data-connection={connection.kind}>
      <header className="topbar">
        <div className="title">
          {drawer !== null && (
            <button
              ref={drawerToggle}
              type="button"
              className="ghost drawer-toggle"
              aria-label="Show conversations"
              aria-controls={drawer.id}
              aria-expanded={drawer.open}
              onClick={drawer.onOpen}
            >
              <MenuIcon />
            </button>
          )}
          <div className="title-text">
            <h1 className={title ? undefined : "untitled"}>{title || "Untitled conversation"}</h1>
            <p className="muted small">Chatting as {state.name}</p>
          </div>
        </div>
        <div className="topbar-actions">
          <button
            type="button"
            className="ghost model-button"
            aria-haspopup="dialog"
            // The name keeps "Model" where a phone hides the word.
            aria-label={`Model: ${label}${state.systemPrompt ? ", own system prompt" : ""}`}
            title="Change the model or the system prompt"
            onClick={() => {
              setSettingsOpen(true);
            }}
          >
            <span className="muted">Model:</span> <span className="model-name">{label}</span>
            {state.systemPrompt !== "" && <span className="tag own-prompt">own prompt</span>}
          </button>
          <span className={`pill pill-${connection.kind}`} role="status" aria-live="polite">
            <span className="dot" aria-hidden="true" />
            <span className="pill-label">{CONNECTION_LABELS[connection.kind]}</span>
          </span>
          <ExportMenu onExport={(format) => onExport(format, state.name)} />
        </div>
      </header>

      {connection.kind === "reconnecting" && (
        <div className="banner banner-warn" role="status" aria-live="polite">
          <span>
            Connection lost.{" "}
            {secondsLeft !== null && secondsLeft > 0
              ? `Reconnecting in ${secondsLeft} s…`
              : "Reconnecting…"}{" "}
            Messages you send now will go out when it is back.
          </span>
          {retryAt !== null && (
            <button type="button" className="ghost" onClick={session.retryNow}>
              Retry now
            </button>
          )}
        </div>
      )}
      {expired && (
        <div className="banner banner-error" role="alert">
          <span>This session has expired. Start a new one to keep chatting.</span>
          <button
            type="button"
            className="primary"
            onClick={() => void startNew()}
            disabled={startingNew}
          >
            Start a new session
          </button>
        </div>
      )}
      {newSessionError !== null && (
        <div className="banner banner-error" role="alert">
          <span>{newSessionError}</span>
        </div>
      )}

      <MessageList
        conversation={conversation}
        activeId={active?.id ?? null}
        name={state.name}
        expired={expired}
        onRetry={(key) => {
          session.retry(key);
        }}
        revisable={revisable}
        replyModelLabel={replyModelLabel}
        onChooseModel={() => {
          setSettingsOpen(true);
        }}
        onRegenerate={() => {
          focusComposer();
          session.regenerate();
        }}
        onEdit={(messageId, content) => {
          focusComposer();
          session.edit(messageId, content);
        }}
      />

      {conversation.notices.length > 0 && (
        <ul className="notices" aria-label="Errors">
          {conversation.notices.map((notice) => (
            <li key={notice.key} className="notice-item" role="alert">
              <div>
                <strong>{notice.title}</strong>
                {notice.detail !== undefined && <p>{notice.detail}</p>}
              </div>
              <button
                type="button"
                className="ghost"
                aria-label="Dismiss"
                onClick={() => {
                  session.dismiss(notice.key);
                }}
              >
                ×
              </button>
            </li>
          ))}
        </ul>
      )}

      <div ref={composer} className="composer-wrap">
        <Composer
          disabled={expired}
          connected={connection.kind === "open"}
          replying={active !== undefined}
          stopping={state.stopping !== null}
          onSend={(text) => {
            session.send(text);
          }}
          onStop={() => {
            session.stop();
          }}
        />
      </div>
      {settingsOpen && (
        <SettingsDialog
          models={models}
          model={model ?? ""}
          systemPrompt={state.systemPrompt}
          replying={active !== undefined}
          onSave={saveSettings}
          onClose={() => {
            setSettingsOpen(false);
          }}
        />
      )}
    </div>
  );
}
