import { useEffect, useLayoutEffect, useRef } from "react";
import type { Conversation, Item, ReplyItem, UserItem } from "../conversation";
import { fullTime, shortTime } from "../time";
import { Markdown } from "./Markdown";

interface Props {
  conversation: Conversation;
  /** The user message being answered now (its reply shows the typing indicator). */
  activeId: string | null;
  name: string;
  /** The session has ended: messages not yet sent never will be. */
  expired: boolean;
  onRetry: (key: string) => void;
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
}: {
  item: UserItem;
  queuedBehind: boolean;
  expired: boolean;
  onRetry: (key: string) => void;
}) {
  let label = STATUS_LABELS[item.status] ?? (queuedBehind ? "Queued" : null);
  if (expired && item.id === null && item.status !== "refused") label = "Not sent: the session ended";
  return (
    <li className="message user" data-role="user" data-status={item.status}>
      <div className="bubble">{item.content}</div>
      <div className="meta">
        <Time iso={item.timestamp} />
        {label !== null && <span className="status">{label}</span>}
      </div>
      {item.error !== undefined && (
        <div className="message-error" role="alert">
          <p>
            <strong>{item.error.title}</strong>
            {item.error.detail !== undefined && <> {item.error.detail}</>}
          </p>
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

function Reply({ item }: { item: ReplyItem }) {
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
        {item.stopped && <span className="tag">Stopped</span>}
      </div>
    </li>
  );
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
});

/** The items to show, with the pending reply of the active message put in place. */
function withPendingReply(items: Item[], activeId: string | null): Item[] {
  if (activeId === null) return items;
  if (items.some((i) => i.kind === "assistant" && i.replyTo === activeId)) return items;
  const index = items.findIndex((i) => i.kind === "user" && i.id === activeId);
  if (index < 0) return items;
  return [...items.slice(0, index + 1), pendingReply(activeId), ...items.slice(index + 1)];
}

export function MessageList({ conversation, activeId, name, expired, onRetry }: Props) {
  const scroller = useRef<HTMLDivElement>(null);
  const atBottom = useRef(true);
  const items = withPendingReply(conversation.items, activeId);

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
            if (item.kind === "assistant") return <Reply key={item.key} item={item} />;
            const queuedBehind =
              activeIndex >= 0 &&
              index > activeIndex &&
              item.status === "queued" &&
              item.error === undefined;
            return (
              <UserMessage
                key={item.key}
                item={item}
                queuedBehind={queuedBehind}
                expired={expired}
                onRetry={onRetry}
              />
            );
          })}
        </ol>
      )}
    </div>
  );
}
