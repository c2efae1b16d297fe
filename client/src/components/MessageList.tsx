import { Fragment, useEffect, useLayoutEffect, useRef, useState, type ReactNode } from "react";
import type { Conversation, Item, ReplyItem, UserItem } from "../conversation";
import type { Version } from "../protocol";
import { fullTime, shortTime } from "../time";
import { Markdown } from "./Markdown";
import { EditForm, VersionNav } from "./TurnControls";

interface Props {
  conversation: Conversation;
  /** The user message being answered now (its reply shows the typing indicator). */
  activeId: string | null;
  name: string;
  /** The session has ended: messages not yet sent never will be. */
  expired: boolean;
  onRetry: (key: string) => void;
  /** The message whose turn can be regenerated or edited now (the last one), if any. */
  revisable: string | null;
  /** The name of a reply's model, when replies say which model wrote them (null: not). */
  replyModelLabel: ((id: string) => string) | null;
  /** Open the conversation's settings (its model is not available). */
  onChooseModel: () => void;
  onRegenerate: () => void;
  onEdit: (messageId: string, content: string) => void;
}

function Time({ iso }: { iso: string | null }) {
  if (iso === null) return null;
  return (
    <time dateTime={iso} title={fullTime(iso)}>
      {shortTime(iso)}
    </time>
  );
}

const STATUS_LABELS: Partial<Record<UserItem["status"], string>> = {
  waiting: "Waiting for the connection…",
  sending: "Sending…",
  unconfirmed: "Sending…",
};

function UserMessage({
  item,
  queuedBehind,
  expired,
  onRetry,
  onChooseModel,
  versions,
  editing,
  actions,
}: {
  item: UserItem;
  queuedBehind: boolean;
  expired: boolean;
  onRetry: (key: string) => void;
  onChooseModel: () => void;
  /** The version navigator, when the turn has earlier versions. */
  versions?: ReactNode;
  /** The edit form, in place of the bubble. */
  editing?: ReactNode;
  /** Buttons for the turn (edit, regenerate). */
  actions?: ReactNode;
}) {
  let label = STATUS_LABELS[item.status] ?? (queuedBehind ? "Queued" : null);
  if (expired && item.id === null && item.status !== "refused") label = "Not sent: the session ended";
  return (
    <li className="message user" data-role="user" data-status={item.status}>
      {editing ?? <div className="bubble">{item.content}</div>}
      <div className="meta">
        {actions}
        {versions}
        <Time iso={item.timestamp} />
        {label !== null && <span className="status">{label}</span>}
      </div>
      {item.error !== undefined && (
        <div className="message-error" role="alert">
          <p>
            <strong>{item.error.title}</strong>
            {item.error.detail !== undefined && <> {item.error.detail}</>}
          </p>
          {item.error.code === "model_unavailable" && !expired && (
            <button type="button" className="ghost" onClick={onChooseModel}>
              Choose another model
            </button>
          )}
          {item.status === "refused" && (
            <button
              type="button"
              className="ghost"
              onClick={() => {
                onRetry(item.key);
              }}
            >
              Send again
            </button>
          )}
        </div>
      )}
    </li>
  );
}

function Reply({
  item,
  actions,
  modelLabel,
}: {
  item: ReplyItem;
  actions?: ReactNode;
  modelLabel?: ((id: string) => string) | null;
}) {
  return (
    <li
      className="message assistant"
      data-role="assistant"
      data-streaming={item.streaming}
      data-stopped={item.stopped}
      aria-busy={item.streaming}
    >
      <div className="bubble">
        {item.content && <Markdown text={item.content} />}
        {item.streaming && (
          <span className="typing" role="img" aria-label="Parley is writing">
            <span />
            <span />
            <span />
          </span>
        )}
      </div>
      <div className="meta">
        <Time iso={item.timestamp} />
        {modelLabel && item.model !== null && (
          <span className="reply-model" data-model={item.model}>
            <span className="sr-only">Written by </span>
            {modelLabel(item.model)}
          </span>
        )}
        {item.stopped && <span className="tag">Stopped</span>}
        {actions}
      </div>
    </li>
  );
}

/** An earlier version's reply, shown while that version is browsed. */
function VersionReply({
  version,
  messageId,
  modelLabel,
}: {
  version: Version;
  messageId: string;
  modelLabel: ((id: string) => string) | null;
}) {
  const reply = version.reply;
  if (reply === null) {
    return (
      <li className="message assistant" data-role="assistant" data-version="earlier">
        <div className="bubble muted">This version got no reply.</div>
      </li>
    );
  }
  const item: ReplyItem = {
    kind: "assistant",
    key: `${messageId}-${version.timestamp}`,
    id: reply.id,
    replyTo: messageId,
    content: reply.content,
    timestamp: reply.timestamp,
    streaming: false,
    stopped: reply.stopped === true,
    model: reply.model ?? null,
  };
  return <Reply item={item} modelLabel={modelLabel} />;
}

/** The reply shown for the active message before its first token arrives. */
const pendingReply = (messageId: string): ReplyItem => ({
  kind: "assistant",
  key: `pending-${messageId}`,
  id: null,
  replyTo: messageId,
  content: "",
  timestamp: null,
  streaming: true,
  stopped: false,
  model: null,
});

/** The items to show, with the pending reply of the active message put in place. */
function withPendingReply(items: Item[], activeId: string | null): Item[] {
  if (activeId === null) return items;
  if (items.some((i) => i.kind === "assistant" && i.replyTo === activeId)) return items;
  const index = items.findIndex((i) => i.kind === "user" && i.id === activeId);
  if (index < 0) return items;
  return [...items.slice(0, index + 1), pendingReply(activeId), ...items.slice(index + 1)];
}

export function MessageList({
  conversation,
  activeId,
  name,
  expired,
  onRetry,
  revisable,
  replyModelLabel,
  onChooseModel,
  onRegenerate,
  onEdit,
}: Props) {
  const scroller = useRef<HTMLDivElement>(null);
  const atBottom = useRef(true);
  const items = withPendingReply(conversation.items, activeId);
  // The version shown of each turn that has several, by message id: an index from 0,
  // kept only while the turn has the number of versions it had when chosen (a new
  // version shows itself).
  const [browsing, setBrowsing] = useState<Record<string, { index: number; of: number }>>({});
  const [editing, setEditing] = useState<string | null>(null);
  const editButton = useRef<HTMLButtonElement>(null);
  const [refocusEdit, setRefocusEdit] = useState(false);
  useEffect(() => {
    if (refocusEdit) editButton.current?.focus();
  }, [refocusEdit]);

  // Follow the conversation while the person is at the bottom; leave them be when they
  // scrolled up to read.
  useLayoutEffect(() => {
    const element = scroller.current;
    if (element !== null && atBottom.current) element.scrollTop = element.scrollHeight;
  });
  useEffect(() => {
    const element = scroller.current;
    if (element === null) return;
    const onScroll = () => {
      atBottom.current = element.scrollHeight - element.scrollTop - element.clientHeight < 48;
    };
    element.addEventListener("scroll", onScroll, { passive: true });
    return () => {
      element.removeEventListener("scroll", onScroll);
    };
  }, []);

  const activeIndex = items.findIndex((i) => i.kind === "user" && i.id === activeId);

  /** The earlier version of turn `messageId` being browsed, if one is. */
  function earlier(messageId: string): Version | undefined {
    const choice = browsing[messageId];
    const user = items.find((i): i is UserItem => i.kind === "user" && i.id === messageId);
    if (choice === undefined || user === undefined) return undefined;
    if (choice.of !== user.versions.length + 1) return undefined;
    return user.versions[choice.index];
  }

  return (
    <div className="scroller" ref={scroller}>
      {items.length === 0 ? (
        <div className="empty">
          <h2>Hello, {name}!</h2>
          <p className="muted">Ask anything. Replies appear word by word as they are written.</p>
        </div>
      ) : (
        <ol className="messages" aria-label="Conversation" role="log">
          {items.map((item, index) => {
            if (item.kind === "assistant") {
              if (item.replyTo !== null && earlier(item.replyTo) !== undefined) return null;
              const regenerate =
                revisable !== null && item.replyTo === revisable && !item.streaming;
              return (
                <Reply
                  key={item.key}
                  item={item}
                  modelLabel={replyModelLabel}
                  actions={regenerate && <RegenerateButton onClick={onRegenerate} />}
                />
              );
            }
            const queuedBehind =
              activeIndex >= 0 &&
              index > activeIndex &&
              item.status === "queued" &&
              item.error === undefined;
            const total = item.versions.length + 1;
            const old = item.id === null ? undefined : earlier(item.id);
            const shown = old === undefined ? total - 1 : item.versions.indexOf(old);
            const latest = old === undefined;
            const canRevise = latest && item.id !== null && item.id === revisable;
            const hasReply = items.some((i) => i.kind === "assistant" && i.replyTo === item.id);
            const versions = total > 1 && item.id !== null && (
              <VersionNav
                shown={shown}
                total={total}
                onShow={(i) => {
                  const id = item.id ?? "";
                  setBrowsing((b) => ({ ...b, [id]: { index: i, of: total } }));
                  setEditing(null);
                }}
              />
            );
            const isEditing = editing !== null && editing === item.id && latest;
            const actions = canRevise && !isEditing && (
              <>
                <button
                  ref={editButton}
                  type="button"
                  className="icon-text"
                  aria-label="Edit the message"
                  onClick={() => {
                    setEditing(item.id);
                    setRefocusEdit(false);
                  }}
                >
                  Edit
                </button>
                {!hasReply && <RegenerateButton onClick={onRegenerate} />}
              </>
            );
            return (
              <Fragment key={item.key}>
                <UserMessage
                  item={
                    old === undefined
                      ? item
                      : {
                          ...item,
                          content: old.content,
                          timestamp: old.timestamp,
                          error: undefined,
                        }
                  }
                  queuedBehind={queuedBehind}
                  expired={expired}
                  onRetry={onRetry}
                  onChooseModel={onChooseModel}
                  versions={versions}
                  actions={actions}
                  editing={
                    isEditing ? (
                      <EditForm
                        initial={item.content}
                        canSave={canRevise}
                        onSave={(content) => {
                          setEditing(null);
                          if (item.id !== null) onEdit(item.id, content);
                        }}
                        onCancel={() => {
                          setEditing(null);
                          setRefocusEdit(true);
                        }}
                      />
                    ) : undefined
                  }
                />
                {old !== undefined && item.id !== null && (
                  <VersionReply version={old} messageId={item.id} modelLabel={replyModelLabel} />
                )}
              </Fragment>
            );
          })}
        </ol>
      )}
    </div>
  );
}

function RegenerateButton({ onClick }: { onClick: () => void }) {
  return (
    <button type="button" className="icon-text" aria-label="Regenerate the reply" onClick={onClick}>
      ↻ Regenerate
    </button>
  );
}
