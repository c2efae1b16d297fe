// Whether the page is narrow (a phone): the sidebar is then a drawer. The width matches
// the stylesheet's breakpoint.

import { useSyncExternalStore } from "react";

const NARROW = "(max-width: 760px)";

function subscribe(onChange: () => void): () => void {
  const query = window.matchMedia(NARROW);
  query.addEventListener("change", onChange);
  return () => {
    query.removeEventListener("change", onChange);
  };
}

export const useNarrow = (): boolean =>
  useSyncExternalStore(subscribe, () => window.matchMedia(NARROW).matches);
