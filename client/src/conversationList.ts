// The person's conversations, as the sidebar lists them: pages of `GET /conversations`,
// newest first, kept current by the page (after a reply, when the list is shown) and
// changed at once by what the person does here (new, rename, delete).

import { useCallback, useEffect, useRef, useState } from "react";
import { OwnerGone, type Api } from "./api";
import type { ConversationSummary, SessionView } from "./protocol";

/** Conversations asked for per page. */
export const PAGE_SIZE = 20;
const MAX_LIMIT = 100; // the server's largest page

export interface ConversationList {
  items: ConversationSummary[];
  /** The owner's conversations in all. */
  total: number;
  /** Every conversation is loaded (no "Load more"). */
  complete: boolean;
  loading: boolean;
  /** Why the last load failed, in words; null when it did not. */
  error: string | null;
  /** The owner token is gone (expired): the caller forgets it. */
  ownerGone: boolean;
}

export interface ConversationListControls {
  list: ConversationList;
  /** Load the next page. */
  loadMore: () => void;
  /** Load again what is loaded (at least the first page). */
  refresh: () => void;
  /** A conversation just started here: first in the list until the server's says so too. */
  added: (view: SessionView) => void;
  renamed: (token: string, title: string) => void;
  removed: (token: string) => void;
}

const EMPTY: ConversationList = {
  items: [],
  total: 0,
  complete: true,
  loading: false,
  error: null,
  ownerGone: false,
};

/** The name a conversation goes by: its title, or a placeholder until it has one. */
export const conversationLabel = (c: Pick<ConversationSummary, "title">): string =>
  c.title || "Untitled conversation";

/**
 * The conversations of `owner` (none when it is null). `onOwnerGone` is called when the
 * server no longer knows the owner (it expired).
 */
export function useConversationList(
  api: Pick<Api, "listConversations">,
  owner: string | null,
  onOwnerGone: () => void,
): ConversationListControls {
  const [list, setList] = useState<ConversationList>(() =>
    owner === null ? EMPTY : { ...EMPTY, complete: false, loading: true },
  );
  // Answers to requests made for another owner, or overtaken by a newer request, are
  // dropped: the newest request wins.
  const request = useRef(0);
  const loaded = useRef(0);
  // Conversations started here, with the number of the last request made before: an
  // answer to that request or an earlier one may not know them yet, so it keeps them.
  const startedHere = useRef(new Map<string, number>());
  loaded.current = list.items.length;

  const load = useCallback(
    async (offset: number, limit: number, replace: boolean) => {
      if (owner === null) return;
      const id = ++request.current;
      setList((l) => ({ ...l, loading: true }));
      try {
        const page = await api.listConversations(owner, offset, limit);
        if (id !== request.current) return;
        for (const [token, before] of startedHere.current) {
          if (id > before) startedHere.current.delete(token); // the server's list has it
        }
        const kept = (items: ConversationSummary[]) =>
          items.filter(
            (c) =>
              startedHere.current.has(c.token) &&
              !page.conversations.some((p) => p.token === c.token),
          );
        setList((l) => ({
          items: replace
            ? [...kept(l.items), ...page.conversations]
            : mergePage(l.items, page.conversations),
          total: page.total + (replace ? kept(l.items).length : 0),
          complete: page.next_offset === null,
          loading: false,
          error: null,
          ownerGone: false,
        }));
      } catch (e) {
        if (id !== request.current) return;
        if (e instanceof OwnerGone) {
          setList({ ...EMPTY, ownerGone: true });
          onOwnerGone();
        } else setList((l) => ({ ...l, loading: false, error: describe(e) }));
      }
    },
    [api, owner, onOwnerGone],
  );

  const refresh = useCallback(() => {
    const limit = Math.min(MAX_LIMIT, Math.max(PAGE_SIZE, loaded.current));
    void load(0, limit, true);
  }, [load]);

  useEffect(() => {
    request.current += 1; // whatever was asked for another owner is moot
    startedHere.current.clear();
    // (An owner just forgotten leaves the note that it expired.)
    setList((l) =>
      owner === null
        ? { ...EMPTY, ownerGone: l.ownerGone }
        : { ...EMPTY, complete: false, loading: true },
    );
    if (owner !== null) void load(0, PAGE_SIZE, true);
  }, [owner, load]);

  return {
    list,
    refresh,
    loadMore: useCallback(() => {
      void load(loaded.current, PAGE_SIZE, false);
    }, [load]),
    added: useCallback((view: SessionView) => {
      startedHere.current.set(view.token, request.current);
      const summary: ConversationSummary = {
        token: view.token,
        title: "",
        name: view.name,
        created: view.session_start,
        last_activity: view.session_start,
        message_count: view.messages.length,
      };
      setList((l) => ({
        ...l,
        items: [summary, ...l.items.filter((c) => c.token !== view.token)],
        total: l.total + 1,
      }));
    }, []),
    renamed: useCallback((token: string, title: string) => {
      setList((l) => ({
        ...l,
        items: l.items.map((c) => (c.token === token ? { ...c, title } : c)),
      }));
    }, []),
    removed: useCallback((token: string) => {
      startedHere.current.delete(token);
      setList((l) => ({
        ...l,
        items: l.items.filter((c) => c.token !== token),
        total: Math.max(0, l.total - 1),
      }));
    }, []),
  };
}

/** `page` after `items`, without the ones already there (the list moved meanwhile). */
function mergePage(
  items: ConversationSummary[],
  page: ConversationSummary[],
): ConversationSummary[] {
  const seen = new Set(items.map((c) => c.token));
  return [...items, ...page.filter((c) => !seen.has(c.token))];
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : "The conversations could not be loaded.";
}
