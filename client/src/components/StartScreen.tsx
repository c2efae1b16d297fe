import { useId, useState, type SyntheticEvent } from "react";
import { defaultModelId } from "../models";
import type { ModelInfo, SessionChoice } from "../protocol";
import { ModelPicker, SystemPromptField } from "./SessionChoiceFields";

interface Props {
  initialName: string;
  /** Shown above the form (e.g. the last session expired). */
  notice?: string | undefined;
  /** The models on offer (empty until loaded): a picker when there is a choice. */
  models: ModelInfo[];
  /** Starts a session; resolves to an error to show, or null. */
  onStart: (name: string, choice: SessionChoice) => Promise<string | null>;
}

const MAX_NAME = 100;

/** The first screen: a name, the model and an optional system prompt, then a new session. */
export function StartScreen({ initialName, notice, models, onStart }: Props) {
  const [name, setName] = useState(initialName);
  // null: the default, whichever it is once the models are loaded.
  const [model, setModel] = useState<string | null>(null);
  const [prompt, setPrompt] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const inputId = useId();
  const errorId = useId();
  const fallback = defaultModelId(models);

  async function submit(event: SyntheticEvent) {
    event.preventDefault();
    const trimmed = name.trim();
    if (!trimmed) {
      setError("Please enter a name.");
      return;
    }
    // Only what differs from the defaults: a session that chose nothing follows the
    // deployment's default model and prompt.
    const choice: SessionChoice = {};
    if (model !== null && model !== fallback) choice.model = model;
    if (prompt.trim()) choice.system_prompt = prompt.trim();
    setBusy(true);
    setError(null);
    const failure = await onStart(trimmed, choice);
    if (failure !== null) {
      setError(failure);
      setBusy(false);
    }
  }

  return (
    <main className="center-screen">
      <form className="card start" onSubmit={(e) => void submit(e)} aria-labelledby="start-title">
        <div className="brand" aria-hidden="true">
          <img src="/favicon.svg" alt="" width="40" height="40" />
        </div>
        <h1 id="start-title">Chat with Parley</h1>
        <p className="muted">Replies stream in as they are written. Your conversation is kept, so you can come back to it.</p>
        {notice !== undefined && (
          <p className="notice" role="status">
            {notice}
          </p>
        )}
        <label htmlFor={inputId}>Your name</label>
        <input
          id={inputId}
          name="name"
          autoComplete="given-name"
          autoFocus
          maxLength={MAX_NAME}
          value={name}
          onChange={(e) => {
            setName(e.target.value);
            setError(null);
          }}
          aria-invalid={error !== null}
          aria-describedby={error !== null ? errorId : undefined}
          placeholder="e.g. Ada"
        />
        {models.length > 1 && (
          <ModelPicker
            models={models}
            value={model ?? fallback ?? ""}
            onChange={(id) => {
              setModel(id);
              setError(null);
            }}
          />
        )}
        <SystemPromptField
          value={prompt}
          onChange={(text) => {
            setPrompt(text);
            setError(null);
          }}
        />
        {error !== null && (
          <p id={errorId} className="error-text" role="alert">
            {error}
          </p>
        )}
        <button type="submit" className="primary" disabled={busy}>
          {busy ? "Starting…" : "Start chatting"}
        </button>
      </form>
    </main>
  );
}
