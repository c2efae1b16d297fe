import { useId } from "react";

interface Props {
  /** The name of the conversation this browser keeps, or null if it keeps none. */
  currentName: string | null;
  /** Open the conversation of the link (it becomes this browser's conversation). */
  onOpen: () => void;
  /** Ignore the link: back to this browser's conversation, or to the start screen. */
  onKeep: () => void;
}

/**
 * Asked when the page's URL holds a session token that is not this browser's own: a
 * link from someone else. Whoever made the link can read and write that conversation,
 * so it is never opened without a yes (a link could otherwise slip a stranger's session
 * in, and the person would type into it). Keeping one's own is the default.
 */
export function LinkedSession({ currentName, onOpen, onKeep }: Props) {
  const titleId = useId();
  const textId = useId();
  return (
    <main className="center-screen">
      <section
        className="card linked"
        role="alertdialog"
        aria-modal="true"
        aria-labelledby={titleId}
        aria-describedby={textId}
      >
        <h1 id={titleId}>Open the conversation from this link?</h1>
        <div id={textId}>
          <p>
            This link opens a conversation that is not the one this browser has been using.
            Anyone who has the link can read that conversation and write in it, so open it
            only if it is yours or you trust who sent it.
          </p>
          {currentName !== null ? (
            <p className="muted">
              Opening it replaces your current conversation{currentName ? ` (as ${currentName})` : ""} in
              this browser; you can only come back to that one with its own link.
            </p>
          ) : (
            <p className="muted">Otherwise you can start a conversation of your own.</p>
          )}
        </div>
        <div className="actions">
          <button type="button" className="primary" autoFocus onClick={onKeep}>
            {currentName !== null ? "Keep my conversation" : "Start my own conversation"}
          </button>
          <button type="button" onClick={onOpen}>
            Open the linked conversation
          </button>
        </div>
      </section>
    </main>
  );
}
