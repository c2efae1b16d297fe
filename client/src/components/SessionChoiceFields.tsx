import { useId } from "react";
import type { ModelInfo } from "../protocol";

/** A labelled choice of model, with the chosen one's description below it. */
export function ModelPicker({
  models,
  value,
  onChange,
  note,
}: {
  models: ModelInfo[];
  value: string;
  onChange: (id: string) => void;
  /** A line under the picker (why a change may be refused now). */
  note?: string | undefined;
}) {
  const id = useId();
  const hintId = useId();
  const chosen = models.find((m) => m.id === value);
  const hint = [chosen?.description, note].filter(Boolean).join(" ");
  return (
    <>
      <label htmlFor={id}>Model</label>
      <select
        id={id}
        name="model"
        value={value}
        onChange={(e) => {
          onChange(e.target.value);
        }}
        aria-describedby={hint ? hintId : undefined}
      >
        {/* A model no longer offered stays shown as what the conversation uses. */}
        {chosen === undefined && value !== "" && <option value={value}>{value}</option>}
        {models.map((m) => (
          <option key={m.id} value={m.id}>
            {m.default ? `${m.label} (default)` : m.label}
          </option>
        ))}
      </select>
      {hint && (
        <p id={hintId} className="muted small field-hint">
          {hint}
        </p>
      )}
    </>
  );
}

/** The session's own system prompt: instructions the model gets before the conversation. */
export function SystemPromptField({
  value,
  onChange,
}: {
  value: string;
  onChange: (text: string) => void;
}) {
  const id = useId();
  const hintId = useId();
  return (
    <>
      <label htmlFor={id}>
        System prompt <span className="muted optional">(optional)</span>
      </label>
      <textarea
        id={id}
        name="system_prompt"
        rows={3}
        value={value}
        placeholder="e.g. Answer briefly, in plain English."
        aria-describedby={hintId}
        onChange={(e) => {
          onChange(e.target.value);
        }}
      />
      <p id={hintId} className="muted small field-hint">
        Instructions the model follows in every reply. Leave it empty for Parley&apos;s usual ones.
      </p>
    </>
  );
}
