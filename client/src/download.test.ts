import { describe, expect, it } from "vitest";
import { exportFilename } from "./download";

const T = "2026-01-01T12:00:00.000Z";

describe("export file names", () => {
  it("come from the title, in lower-case words, with the day and the extension", () => {
    expect(exportFilename("Tides and the Moon!", "Ada", T, "markdown")).toBe(
      "tides-and-the-moon-2026-01-01.md",
    );
    expect(exportFilename("  Crème brûlée / 焼き菓子 ", "Ada", T, "json")).toBe(
      "crème-brûlée-焼き菓子-2026-01-01.json",
    );
  });

  it("fall back to the person's name when there is no title", () => {
    expect(exportFilename("", "Ada Lovelace", T, "json")).toBe("parley-ada-lovelace-2026-01-01.json");
    expect(exportFilename("???", "", "not a date", "markdown")).toBe("parley.md");
  });

  it("stay short, cut at a word", () => {
    const name = exportFilename("word ".repeat(40), "Ada", T, "markdown");
    expect(name.length).toBeLessThanOrEqual(60 + "-2026-01-01.md".length);
    expect(name).toMatch(/^(word-)+word-2026-01-01\.md$/);
  });
});
