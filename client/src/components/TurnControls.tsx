import { useEffect, useRef, useState, type KeyboardEvent, type SyntheticEvent } from "react";

/** "‹ 2/3 ›": which version of a turn is shown, and the way to the others. */
export function VersionNav({
  shown,
  total,
  onShow,
}: {
  /** From 0. */
  shown: number;
  total: number;
  onShow: (index: number) => void;
}) {
  return (
    <div className="versions" role="group" aria-label="Versions of this message">
      <button
        type="button"
        className="icon"
        aria-label="Previous version"
        disabled={shown === 0}
        onClick={() => {
          onShow(shown - 1);
        }}
      >
        ‹
      </button>
      <span className="version-count" aria-live="polite">
        <span aria-hidden="true">
          {shown + 1}/{total}
        </span>
        <span className="sr-only">
          Version {shown + 1} of {total}
        </span>
      </span>
      <button
        type="button"
        className="icon"
        aria-label="Next version"
        disabled={shown === total - 1}
        onClick={() => {
          onShow(shown + 1);
        }}
      >
        ›
      </button>
    </div>
  );
}

/** A message being edited: Enter saves and asks for a new reply, Escape cancels. */
export function EditForm({
  initial,
  canSave,
  onSave,
  onCancel,
}: {
  initial: string;
  /** The turn can still be revised (no reply started meanwhile). */
  canSave: boolean;
  onSave: (content: string) => void;
  onCancel: () => void;
}) {
  const [text, setText] = useState(initial);
  const input = useRef<HTMLTextAreaElement>(null);
  const ready = canSave && text.trim() !== "" && text !== initial;

  useEffect(() => {
    const element = input.current;
    if (element === null) return;
    element.focus();
    element.setSelectionRange(element.value.length, element.value.length);
  }, []);

  function save(event?: SyntheticEvent) {
    event?.preventDefault();
    if (ready) onSave(text);
  }

  function onKeyDown(event: KeyboardEvent<HTMLTextAreaElement>) {
    if (event.key === "Enter" && !event.shiftKey && !event.nativeEvent.isComposing) save(event);
    else if (event.key === "Escape") {
      event.preventDefault();
      onCancel();
    }
  }

  return (
    <form className="edit-form" onSubmit={save}>
      <textarea
        ref={input}
        aria-label="Edit your message"
        value={text}
        rows={2}
        onChange={(e) => {
          setText(e.target.value);
        }}
        onKeyDown={onKeyDown}
      />
      <div className="edit-actions">
        <button type="button" className="ghost" onClick={onCancel}>
          Cancel
        </button>
        <button type="submit" className="primary" disabled={!ready}>
          Save and send
        </button>
      </div>
    </form>
  );
}
