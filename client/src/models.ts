// The models a conversation may use (`GET /models`), loaded once per page, and the
// names people see for them.

import { useEffect, useState } from "react";
import { ApiError, SessionGone, type Api } from "./api";
import type { ModelInfo } from "./protocol";

export interface Catalog {
  /** The models on offer, the default first; empty until loaded (or if loading failed). */
  models: ModelInfo[];
}

/**
 * The catalog, loaded once. A page that cannot load it still chats: new conversations
 * get the default model, and the header names a model by its id.
 */
export function useCatalog(api: Pick<Api, "listModels">): Catalog {
  const [catalog, setCatalog] = useState<Catalog>({ models: [] });
  useEffect(() => {
    let live = true;
    api.listModels().then(
      (models) => {
        if (live) setCatalog({ models });
      },
      (e: unknown) => {
        console.warn("cannot load the models:", e);
      },
    );
    return () => {
      live = false;
    };
  }, [api]);
  return catalog;
}

/** The id of the model sessions get unless they choose (null: not known yet). */
export const defaultModelId = (models: ModelInfo[]): string | null =>
  (models.find((m) => m.default) ?? models[0])?.id ?? null;

/** The model a session uses: the one it chose, else the catalog's default. */
export const sessionModel = (models: ModelInfo[], chosen: string | null): string | null =>
  chosen ?? defaultModelId(models);

/** What people call model `id`: its label, or the id itself for one no longer offered. */
export const modelLabel = (models: ModelInfo[], id: string): string =>
  models.find((m) => m.id === id)?.label ?? id;

/**
 * Why a choice of model or system prompt was not taken (`POST /token`, `PATCH
 * /session`), in words; the server's 400s tell only by their detail.
 */
export function describeChoiceError(error: unknown): string {
  if (error instanceof SessionGone) return "This conversation has expired or was deleted.";
  if (error instanceof ApiError && error.status === 400) {
    const limit = /system_prompt must be at most (\d+)/.exec(error.detail);
    if (limit !== null) return `The system prompt is too long: at most ${limit[1]} characters.`;
    if (/own system prompt/.test(error.detail)) {
      return "This Parley keeps its own system prompt: a conversation cannot set one. Leave the field empty.";
    }
    if (/unknown model/.test(error.detail)) {
      return "That model is no longer offered. Choose another one.";
    }
  }
  return error instanceof Error ? error.message : "Something went wrong.";
}
