// Error events in words a person can act on. The codes are the server's stable error
// codes (README, "Error codes"); `detail` is the server's own sentence, kept as a second
// line when it adds something (numbers, limits).

export interface Notice {
  /** The error code it comes from. */
  code: string;
  /** What happened and what to do, in plain words. */
  title: string;
  /** The server's detail, when worth showing. */
  detail?: string;
}

interface Text {
  title: string;
  /** The title when the error concerns no message on the page. */
  general?: string;
  showDetail?: boolean;
}

const TEXTS: Record<string, Text> = {
  empty_message: { title: "That message was empty, so it was not sent." },
  message_too_long: { title: "That message is too long to send.", showDetail: true },
  invalid_frame: { title: "The server could not read what was sent.", showDetail: true },
  unknown_command: {
    title: "The server does not know that command (it may be an older version).",
    showDetail: true,
  },
  session_expired: { title: "This session has expired." },
  auth_expired: {
    title: "Your sign-in expired.",
    general: "Your sign-in expired; reconnecting with a fresh one.",
  },
  too_many_pending: {
    title: "Too many messages are already waiting for a reply. Wait for one, then send this again.",
  },
  rate_limited: {
    title: "The model is busy and turned this message down. Try again in a moment.",
  },
  llm_unavailable: {
    title: "The model could not be reached, so this message got no reply. Try again later.",
  },
  llm_rejected: { title: "The model refused this request, so there is no reply." },
  delivery_failed: {
    title: "This message failed several times, so it was set aside without a reply.",
  },
  too_many_resumes: {
    title: "The connection asked to catch up too often. It will catch up again in a moment.",
  },
  resume_truncated: {
    title: "Some missed messages are still on their way; catching up continues.",
  },
  overloaded: {
    title: "Parley has too many messages waiting right now, so this one was not sent. Send it again in a while.",
  },
  session_full: {
    title: "This conversation has reached its length limit. Start a new session to go on.",
    showDetail: true,
  },
  message_lost: {
    title: "This message was lost before it got a reply. Send it again.",
  },
  unavailable: {
    title: "The server could not store this message. Send it again.",
    general: "Parley cannot reach its store right now.",
    showDetail: true,
  },
  too_many_requests: {
    title: "Too many messages in a short time, so this one was not sent.",
    general: "Too many connections from your address right now.",
  },
  reply_in_progress: {
    title:
      "A reply is still being written, so nothing was changed. Wait for it to finish, then try again.",
  },
  not_last_message: {
    title: "Only the last message of the conversation can be edited or answered again.",
  },
  too_many_versions: {
    title: "This message has as many earlier versions as can be kept, so it was not changed.",
    showDetail: true,
  },
  too_many_attempts: {
    title: "This message was answered again as many times as it can be, so it was not changed.",
    showDetail: true,
  },
  quota_exceeded: {
    title: "This conversation has used its share of the model for now, so this was not sent.",
    general: "Your share of the model is used up for now.",
  },
  model_unavailable: {
    title:
      "This conversation's model is not available right now, so this message got no reply. Choose another model in the conversation's settings, or send it again later.",
    general:
      "This conversation's model is not available right now. Choose another model in the conversation's settings, or try again later.",
  },
};

const NBSP = "\u00a0"; // a number and its unit stay on one line

/** A wait in words: "42 s", "5 min", "3 h 20 min". */
export function formatWait(seconds: number): string {
  const s = Math.max(1, Math.ceil(seconds));
  if (s < 90) return `${s}${NBSP}s`;
  const minutes = Math.ceil(s / 60);
  if (minutes < 90) return `${minutes}${NBSP}min`;
  const hours = `${Math.floor(minutes / 60)}${NBSP}h`;
  const rest = minutes % 60;
  return rest === 0 ? hours : `${hours} ${rest}${NBSP}min`;
}

/**
 * An error event's code and detail as a notice for people; `general` when it concerns
 * no message on the page.
 */
export function describeError(
  code: string,
  detail: string,
  general = false,
  retryAfterS?: number,
): Notice {
  const text = TEXTS[code];
  if (text === undefined) {
    return { code, title: "Something went wrong.", detail: detail ? sentence(detail) : undefined };
  }
  let title = (general ? text.general : undefined) ?? text.title;
  // A limit's refusal says how long to wait.
  if (retryAfterS !== undefined) title += ` Try again in ${formatWait(retryAfterS)}.`;
  return text.showDetail && detail ? { code, title, detail: sentence(detail) } : { code, title };
}

/** Codes that refuse a message before it is queued (the error has no message id). */
export const REFUSALS = new Set([
  "empty_message",
  "message_too_long",
  "too_many_pending",
  "overloaded",
  "session_full",
  "unavailable",
  "too_many_requests",
  "quota_exceeded",
  "model_unavailable",
]);

function sentence(text: string): string {
  const trimmed = text.trim();
  const first = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(first) ? first : `${first}.`;
}
