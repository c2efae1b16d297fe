import { useEffect, useId, useRef, useState } from "react";
import type { ExportFormat } from "../protocol";

interface Props {
  /** Resolves to an error to show, or null once the file is saved. */
  onExport: (format: ExportFormat) => Promise<string | null>;
}

const FORMATS: { format: ExportFormat; label: string; hint: string }[] = [
  { format: "markdown", label: "Markdown", hint: ".md, to read" },
  { format: "json", label: "JSON", hint: ".json, for programs" },
];

/**
 * "Export": a button that shows the formats (a disclosure, so Tab and Enter are all it
 * takes); Escape or a click elsewhere closes it.
 */
export function ExportMenu({ onExport }: Props) {
  const [open, setOpen] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const root = useRef<HTMLDivElement>(null);
  const toggle = useRef<HTMLButtonElement>(null);
  const panelId = useId();

  useEffect(() => {
    if (!open) return;
    const onPointerDown = (event: PointerEvent) => {
      if (!root.current?.contains(event.target as Node)) setOpen(false);
    };
    document.addEventListener("pointerdown", onPointerDown);
    return () => {
      document.removeEventListener("pointerdown", onPointerDown);
    };
  }, [open]);

  async function run(format: ExportFormat) {
    setBusy(true);
    const failure = await onExport(format);
    setBusy(false);
    setError(failure);
    if (failure === null) {
      setOpen(false);
      toggle.current?.focus();
    }
  }

  return (
    <div
      className="export"
      ref={root}
      onKeyDown={(event) => {
        if (event.key === "Escape" && open) {
          event.preventDefault();
          setOpen(false);
          toggle.current?.focus();
        }
      }}
    >
      <button
        ref={toggle}
        type="button"
        className="ghost"
        aria-expanded={open}
        aria-controls={panelId}
        onClick={() => {
          setOpen(!open);
          setError(null);
        }}
      >
        Export
      </button>
      <div id={panelId} className="export-panel" hidden={!open} role="group" aria-label="Export as">
        {FORMATS.map(({ format, label, hint }) => (
          <button
            key={format}
            type="button"
            disabled={busy}
            aria-label={`Export as ${label}`}
            onClick={() => void run(format)}
          >
            {label} <span className="muted small">{hint}</span>
          </button>
        ))}
        {error !== null && (
          <p className="error-text small" role="alert">
            {error}
          </p>
        )}
      </div>
    </div>
  );
}
