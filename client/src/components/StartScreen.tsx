import { useId, useState, type SyntheticEvent } from "react";

interface Props {
  initialName: string;
  /** Shown above the form (e.g. the last session expired). */
  notice?: string | undefined;
  /** Starts a session; resolves to an error to show, or null. */
  onStart: (name: string) => Promise<string | null>;
}

const MAX_NAME = 100;

/** The first screen: a name, then a new session. */
export function StartScreen({ initialName, notice, onStart }: Props) {
  const [name, setName] = useState(initialName);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const inputId = useId();
  const errorId = useId();

  async function submit(event: SyntheticEvent) {
    event.preventDefault();
    const trimmed = name.trim();
    if (!trimmed) {
      setError("Please enter a name.");
      return;
    }
    setBusy(true);
    setError(null);
    const failure = await onStart(trimmed);
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
