import { useEffect, useId, useRef, useState, type SyntheticEvent } from "react";
import type { ModelInfo, SessionChoice } from "../protocol";
import { ModelPicker, SystemPromptField } from "./SessionChoiceFields";

interface Props {
  models: ModelInfo[];
  /** The model the conversation uses now ("" when not known). */
  model: string;
  /** Its own system prompt ("": the deployment's). */
  systemPrompt: string;
  /** A reply is being written or messages wait for one: the server refuses a new model. */
  replying: boolean;
  /** Saves the changes; resolves to an error to show, or null once saved. */
  onSave: (choice: SessionChoice) => Promise<string | null>;
  onClose: () => void;
}

/**
 * The open conversation's model and system prompt, in a modal `<dialog>`: the browser
 * keeps the focus inside it and Escape closes it without saving; the focus goes back
 * to the button that opened it.
 */
export function SettingsDialog({ models, model, systemPrompt, replying, onSave, onClose }: Props) {
  const dialog = useRef<HTMLDialogElement>(null);
  const form = useRef<HTMLFormElement>(null);
  const [chosenModel, setChosenModel] = useState(model);
  const [prompt, setPrompt] = useState(systemPrompt);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const titleId = useId();

  useEffect(() => {
    const element = dialog.current;
    if (element === null) return;
    const opener = document.activeElement instanceof HTMLElement ? document.activeElement : null;
    element.showModal();
    form.current?.querySelector<HTMLElement>("select, textarea")?.focus();
    return () => {
      element.close();
      opener?.focus();
    };
  }, []);

  async function save(event: SyntheticEvent) {
    event.preventDefault();
    // Only what changed: a new prompt alone is taken even while a reply is written.
    const choice: SessionChoice = {};
    if (chosenModel !== model) choice.model = chosenModel;
    if (prompt.trim() !== systemPrompt) choice.system_prompt = prompt.trim();
    if (Object.keys(choice).length === 0) {
      onClose();
      return;
    }
    setBusy(true);
    setError(null);
    const failure = await onSave(choice);
    setBusy(false);
    if (failure === null) onClose();
    else setError(failure);
  }

  const modelNote =
    replying && chosenModel !== model
      ? "A reply is being written: the model can change once it has finished."
      : undefined;

  return (
    <dialog
      ref={dialog}
      className="card settings"
      aria-labelledby={titleId}
      onCancel={(event) => {
        event.preventDefault(); // Escape: closed by onClose, like the Cancel button
        onClose();
      }}
    >
      <form ref={form} onSubmit={(e) => void save(e)}>
        <h2 id={titleId}>Conversation settings</h2>
        <ModelPicker
          models={models}
          value={chosenModel}
          onChange={(id) => {
            setChosenModel(id);
            setError(null);
          }}
          note={modelNote}
        />
        <SystemPromptField
          value={prompt}
          onChange={(text) => {
            setPrompt(text);
            setError(null);
          }}
        />
        <div className="reset-row">
          <button
            type="button"
            className="ghost"
            disabled={prompt === ""}
            onClick={() => {
              setPrompt("");
              setError(null);
              form.current?.querySelector("textarea")?.focus();
            }}
          >
            Use the default prompt
          </button>
        </div>
        {error !== null && (
          <p className="error-text" role="alert">
            {error}
          </p>
        )}
        <div className="actions">
          <button type="button" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" className="primary" disabled={busy}>
            {busy ? "Saving…" : "Save"}
          </button>
        </div>
      </form>
    </dialog>
  );
}
