import { useId, useRef, useState, type SyntheticEvent, type KeyboardEvent } from "react";

interface Props {
  /** The session is over: nothing can be sent. */
  disabled: boolean;
  /** The socket is open (messages typed otherwise wait for it). */
  connected: boolean;
  /** A reply is on its way (the Stop button shows). */
  replying: boolean;
  /** Stop was asked and the reply has not ended yet. */
  stopping: boolean;
  onSend: (text: string) => void;
  onStop: () => void;
}

/** The message box: Enter sends, Shift+Enter starts a new line. */
export function Composer({ disabled, connected, replying, stopping, onSend, onStop }: Props) {
  const [text, setText] = useState("");
  const input = useRef<HTMLTextAreaElement>(null);
  const hintId = useId();

  function send(event?: SyntheticEvent) {
    event?.preventDefault();
    if (disabled || !text.trim()) return;
    onSend(text);
    setText("");
    input.current?.focus();
  }

  function onKeyDown(event: KeyboardEvent<HTMLTextAreaElement>) {
    if (event.key === "Enter" && !event.shiftKey && !event.nativeEvent.isComposing) {
      event.preventDefault();
      send();
    }
  }

  let hint = "Enter to send, Shift+Enter for a new line.";
  if (disabled) hint = "This session has ended.";
  else if (!connected) hint = "Not connected: what you send now goes out once the connection is back.";

  return (
    <form className="composer" onSubmit={send}>
      <div className="composer-row">
        <textarea
          ref={input}
          aria-label="Message"
          aria-describedby={hintId}
          placeholder={disabled ? "Session expired" : "Message Parley…"}
          rows={1}
          value={text}
          disabled={disabled}
          autoFocus
          onChange={(e) => {
            setText(e.target.value);
          }}
          onKeyDown={onKeyDown}
        />
        {replying && !disabled && (
          <button
            type="button"
            className="stop"
            onClick={onStop}
            disabled={!connected || stopping}
            aria-label="Stop the reply"
            title={connected ? "Stop the reply" : "Stopping needs the connection"}
          >
            <span className="stop-square" aria-hidden="true" />
            {stopping ? "Stopping…" : "Stop"}
          </button>
        )}
        <button
          type="submit"
          className="primary send"
          disabled={disabled || !text.trim()}
          aria-label="Send message"
        >
          Send
        </button>
      </div>
      <p id={hintId} className="hint">
        {hint}
      </p>
    </form>
  );
}
