// Saving an exported conversation as a file whose name says what it holds.

import type { ExportFormat } from "./protocol";

const EXTENSIONS: Record<ExportFormat, string> = { json: "json", markdown: "md" };
const MAX_STEM = 60;

/**
 * A file name for a conversation: its title (or "parley-<name>") as lower-case words
 * joined by hyphens, letters of any script kept, then the day it started and the
 * format's extension: "tides-and-the-moon-2026-01-01.md".
 */
export function exportFilename(
  title: string,
  name: string,
  started: string,
  format: ExportFormat,
): string {
  const slug = (text: string) =>
    text
      .normalize("NFKC")
      .toLowerCase()
      .replace(/[^\p{L}\p{N}]+/gu, "-")
      .replace(/^-+|-+$/g, "");
  let stem = slug(title) || slug(`parley ${name}`) || "parley";
  if (stem.length > MAX_STEM) {
    const cut = stem.slice(0, MAX_STEM);
    stem = cut.replace(/-[^-]*$/, "") || cut; // at a word, unless it is one long word
  }
  const day = /^\d{4}-\d{2}-\d{2}/.exec(started)?.[0];
  return `${stem}${day ? `-${day}` : ""}.${EXTENSIONS[format]}`;
}

/** Have the browser save `blob` as `filename` (a download, not a navigation). */
export function saveFile(blob: Blob, filename: string): void {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  link.rel = "noopener";
  document.body.append(link);
  link.click();
  link.remove();
  // The download has taken the blob by the next task; the URL can go.
  setTimeout(() => {
    URL.revokeObjectURL(url);
  }, 0);
}
