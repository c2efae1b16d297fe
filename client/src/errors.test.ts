import { describe, expect, it } from "vitest";
import { ApiError, SessionGone } from "./api";
import { describeError, formatWait } from "./errors";
import { describeChoiceError, modelLabel, sessionModel } from "./models";
import { parseEvent } from "./protocol";

const plain = (text: string): string => text.replaceAll("\u00a0", " ");

describe("refusals by admission limits", () => {
  it("say how long to wait", () => {
    expect(plain(describeError("too_many_requests", "20 messages a minute", false, 42).title)).toBe(
      "Too many messages in a short time, so this one was not sent. Try again in 42 s.",
    );
    expect(plain(describeError("quota_exceeded", "", true, 3 * 3600 + 1200).title)).toBe(
      "Your share of the model is used up for now. Try again in 3 h 20 min.",
    );
  });

  it("words waits", () => {
    expect(plain(formatWait(0.2))).toBe("1 s");
    expect(plain(formatWait(89))).toBe("89 s");
    expect(plain(formatWait(300))).toBe("5 min");
    expect(plain(formatWait(7200))).toBe("2 h");
  });

  it("keep retry_after_s from the wire, and refuse a mistyped one", () => {
    const frame = { type: "error", message_id: null, code: "too_many_requests", detail: "d" };
    expect(parseEvent(JSON.stringify({ ...frame, retry_after_s: 3.5 }))).toMatchObject({
      retry_after_s: 3.5,
    });
    expect(parseEvent(JSON.stringify({ ...frame, retry_after_s: "soon" }))).toBeNull();
  });
});

describe("refusals of regenerate and edit", () => {
  it("are worded, not shown as codes", () => {
    expect(describeError("reply_in_progress", "").title).toMatch(/still being written/);
    expect(describeError("not_last_message", "").title).toMatch(/Only the last message/);
    expect(describeError("too_many_versions", "at most 20 versions")).toEqual({
      code: "too_many_versions",
      title: "This message has as many earlier versions as can be kept, so it was not changed.",
      detail: "At most 20 versions.",
    });
  });
});

describe("choices of model and system prompt", () => {
  const models = [
    { id: "small", label: "Small", description: "", default: true },
    { id: "large", label: "Large", description: "", default: false },
  ];

  it("name the session's model, the default when it chose none", () => {
    expect(sessionModel(models, null)).toBe("small");
    expect(sessionModel(models, "large")).toBe("large");
    expect(sessionModel([], null)).toBeNull();
    expect(modelLabel(models, "large")).toBe("Large");
    expect(modelLabel(models, "retired")).toBe("retired");
  });

  it("say in words why the server refused one", () => {
    const refused = (status: number, detail: string) =>
      describeChoiceError(new ApiError(status, detail));
    expect(refused(400, "system_prompt must be at most 20 characters")).toBe(
      "The system prompt is too long: at most 20 characters.",
    );
    expect(refused(400, "this deployment does not take a session's own system prompt")).toMatch(
      /cannot set one/,
    );
    expect(refused(400, "unknown model 'x'; GET /models lists the models")).toMatch(
      /Choose another one/,
    );
    expect(refused(400, "name must be at most 100 characters")).toBe(
      "name must be at most 100 characters",
    );
    expect(describeChoiceError(new SessionGone())).toMatch(/expired/);
  });
});
