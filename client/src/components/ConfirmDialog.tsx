import { useEffect, useId, useRef, type ReactNode } from "react";

export interface Confirmation {
  title: string;
  body: ReactNode;
  /** The button that does it (a destructive action's name: "Delete"). */
  confirmLabel: string;
  cancelLabel?: string;
  onConfirm: () => void;
}

interface Props extends Confirmation {
  onClose: () => void;
}

/**
 * A modal question before something that cannot be undone. The browser's own modal
 * `<dialog>` keeps focus inside it and closes it on Escape; the safe answer has the
 * focus first, so Enter alone never destroys anything.
 */
export function ConfirmDialog({
  title,
  body,
  confirmLabel,
  cancelLabel = "Cancel",
  onConfirm,
  onClose,
}: Props) {
  const dialog = useRef<HTMLDialogElement>(null);
  const cancel = useRef<HTMLButtonElement>(null);
  const titleId = useId();
  const bodyId = useId();

  useEffect(() => {
    const element = dialog.current;
    if (element === null) return;
    // Back where it was asked from, once answered.
    const opener = document.activeElement instanceof HTMLElement ? document.activeElement : null;
    element.showModal();
    cancel.current?.focus();
    return () => {
      element.close();
      opener?.focus();
    };
  }, []);

  return (
    <dialog
      ref={dialog}
      className="card confirm"
      aria-labelledby={titleId}
      aria-describedby={bodyId}
      onCancel={(event) => {
        event.preventDefault(); // Escape: closed by onClose, like the Cancel button
        onClose();
      }}
    >
      <h2 id={titleId}>{title}</h2>
      <div id={bodyId}>{body}</div>
      <div className="actions">
        <button ref={cancel} type="button" onClick={onClose}>
          {cancelLabel}
        </button>
        <button
          type="button"
          className="danger"
          onClick={() => {
            onClose();
            onConfirm();
          }}
        >
          {confirmLabel}
        </button>
      </div>
    </dialog>
  );
}
