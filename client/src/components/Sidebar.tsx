import { useEffect, useId, useRef, useState, type KeyboardEvent, type SyntheticEvent } from "react";
import { conversationLabel, type ConversationList } from "../conversationList";
import type { ConversationSummary } from "../protocol";
import { fullTime, shortTime } from "../time";
import { PencilIcon, TrashIcon } from "./Icons";

const MAX_TITLE = 100;

interface Props {
  id: string;
  list: ConversationList;
  /** A failure to show (a delete that did not happen). */
  notice: string | null;
  /** The open conversation's token, if any. */
  current: string | null;
  /** The open conversation is not in the list (started before lists, or from a link). */
  unlisted: { name: string } | null;
  /** The page is narrow: the sidebar is a drawer, shown when `open`. */
  drawer: boolean;
  open: boolean;
  onClose: () => void;
  onNew: () => void;
  creating: boolean;
  onSelect: (token: string) => void;
  /** Resolves to an error to show, or null once renamed. */
  onRename: (token: string, title: string) => Promise<string | null>;
  onDelete: (conversation: ConversationSummary) => void;
  onLoadMore: () => void;
}

/** The person's conversations: new, open, rename, delete. A drawer on a phone. */
export function Sidebar(props: Props) {
  const { list, current, drawer, open, onClose } = props;
  const [renaming, setRenaming] = useState<string | null>(null);
  /** The row whose rename just ended: its Rename button gets the focus back. */
  const [renamed, setRenamed] = useState<string | null>(null);
  const panel = useRef<HTMLElement>(null);
  const hidden = drawer && !open;

  // An opened drawer takes the focus, so the keyboard goes on from there.
  useEffect(() => {
    if (!drawer || !open) return;
    const element = panel.current;
    const currentRow = element?.querySelector<HTMLElement>("[aria-current='true']");
    (currentRow ?? element?.querySelector("button"))?.focus();
  }, [drawer, open]);

  function onKeyDown(event: KeyboardEvent) {
    if (event.key === "Escape" && drawer && open && !event.defaultPrevented) {
      event.preventDefault();
      onClose();
    }
  }

  const count = list.total === 1 ? "1 conversation" : `${list.total} conversations`;
  return (
    <>
      {drawer && open && <div className="backdrop" aria-hidden="true" onClick={onClose} />}
      <nav
        id={props.id}
        ref={panel}
        className="sidebar"
        data-open={open}
        aria-label="Conversations"
        hidden={hidden}
        onKeyDown={onKeyDown}
      >
        <div className="sidebar-head">
          <img src="/favicon.svg" alt="" width="24" height="24" />
          <strong>Parley</strong>
          <button
            type="button"
            className="primary new-chat"
            onClick={props.onNew}
            disabled={props.creating}
            aria-label="Start a new conversation"
          >
            + New chat
          </button>
          {drawer && (
            <button
              type="button"
              className="ghost"
              onClick={onClose}
              aria-label="Close conversations"
            >
              ×
            </button>
          )}
        </div>
        {list.ownerGone && (
          <p className="sidebar-note" role="status">
            Your conversation list has expired. New conversations start a new one.
          </p>
        )}
        {list.error !== null && (
          <p className="sidebar-note error-text" role="alert">
            The list could not be loaded: {list.error}
          </p>
        )}
        {props.notice !== null && (
          <p className="sidebar-note error-text" role="alert">
            {props.notice}
          </p>
        )}
        <ul className="conversations">
          {props.unlisted !== null && current !== null && (
            <li className="conversation current unlisted">
              <button
                type="button"
                className="conversation-open"
                aria-current="true"
                onClick={onClose}
              >
                <span className="conversation-title">
                  {props.unlisted.name
                    ? `${props.unlisted.name}'s conversation`
                    : "This conversation"}
                </span>
                <span className="conversation-meta">Not in your list: only its link opens it</span>
              </button>
            </li>
          )}
          {list.items.map((c) =>
            renaming === c.token ? (
              <RenameRow
                key={c.token}
                conversation={c}
                onSave={async (title) => {
                  const error = await props.onRename(c.token, title);
                  if (error === null) {
                    setRenaming(null);
                    setRenamed(c.token);
                  }
                  return error;
                }}
                onCancel={() => {
                  setRenaming(null);
                  setRenamed(c.token);
                }}
              />
            ) : (
              <ConversationRow
                key={c.token}
                conversation={c}
                current={c.token === current}
                focusRename={renamed === c.token}
                onSelect={props.onSelect}
                onRename={() => {
                  setRenaming(c.token);
                }}
                onDelete={props.onDelete}
              />
            ),
          )}
        </ul>
        {list.items.length === 0 && !list.loading && props.unlisted === null && (
          <p className="sidebar-note muted">No conversations yet.</p>
        )}
        <div className="sidebar-foot">
          {!list.complete && (
            <button
              type="button"
              className="ghost"
              onClick={props.onLoadMore}
              disabled={list.loading}
            >
              {list.loading ? "Loading…" : "Load more"}
            </button>
          )}
          {list.total > 0 && <span className="muted small">{count}</span>}
        </div>
      </nav>
    </>
  );
}

function ConversationRow({
  conversation: c,
  current,
  focusRename,
  onSelect,
  onRename,
  onDelete,
}: {
  conversation: ConversationSummary;
  current: boolean;
  focusRename: boolean;
  onSelect: (token: string) => void;
  onRename: () => void;
  onDelete: (conversation: ConversationSummary) => void;
}) {
  const metaId = useId();
  const renameButton = useRef<HTMLButtonElement>(null);
  const label = conversationLabel(c);
  useEffect(() => {
    if (focusRename) renameButton.current?.focus();
  }, [focusRename]);
  const messages = c.message_count === 1 ? "1 message" : `${c.message_count} messages`;
  return (
    <li className={`conversation${current ? " current" : ""}`}>
      <button
        type="button"
        className="conversation-open"
        aria-label={label}
        aria-describedby={metaId}
        aria-current={current ? "true" : undefined}
        onClick={() => {
          onSelect(c.token);
        }}
      >
        <span className={`conversation-title${c.title ? "" : " untitled"}`}>{label}</span>
        <span id={metaId} className="conversation-meta">
          <time dateTime={c.last_activity} title={fullTime(c.last_activity)}>
            {shortTime(c.last_activity)}
          </time>{" "}
          · {messages}
        </span>
      </button>
      <div className="conversation-actions">
        <button
          ref={renameButton}
          type="button"
          className="icon"
          onClick={onRename}
          aria-label={`Rename ${label}`}
          title="Rename"
        >
          <PencilIcon />
        </button>
        <button
          type="button"
          className="icon"
          onClick={() => {
            onDelete(c);
          }}
          aria-label={`Delete ${label}`}
          title="Delete"
        >
          <TrashIcon />
        </button>
      </div>
    </li>
  );
}

/** A conversation's title being edited: Enter saves, Escape cancels. */
function RenameRow({
  conversation,
  onSave,
  onCancel,
}: {
  conversation: ConversationSummary;
  onSave: (title: string) => Promise<string | null>;
  onCancel: () => void;
}) {
  const [title, setTitle] = useState(conversation.title);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const errorId = useId();

  async function submit(event: SyntheticEvent) {
    event.preventDefault();
    if (!title.trim()) {
      setError("A title cannot be empty.");
      return;
    }
    setBusy(true);
    const failure = await onSave(title.trim());
    setBusy(false);
    setError(failure);
  }

  return (
    <li className="conversation renaming">
      <form onSubmit={(e) => void submit(e)} className="rename-form">
        <input
          aria-label="Conversation title"
          aria-invalid={error !== null}
          aria-describedby={error !== null ? errorId : undefined}
          value={title}
          maxLength={MAX_TITLE}
          autoFocus
          onFocus={(e) => {
            e.target.select();
          }}
          onChange={(e) => {
            setTitle(e.target.value);
            setError(null);
          }}
          onKeyDown={(e) => {
            if (e.key === "Escape") {
              e.preventDefault(); // the drawer stays open
              onCancel();
            }
          }}
        />
        <button type="submit" className="primary" disabled={busy}>
          Save
        </button>
        <button type="button" className="ghost" onClick={onCancel}>
          Cancel
        </button>
        {error !== null && (
          <p id={errorId} className="error-text small" role="alert">
            {error}
          </p>
        )}
      </form>
    </li>
  );
}
