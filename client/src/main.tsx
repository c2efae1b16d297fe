import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { App } from "./App";
import "./styles.css";

// A link that differs from the open page only in its fragment (`/#token=...`) does not
// load the page again: load it, so the link is read (and asked about) as any link is.
window.addEventListener("hashchange", () => {
  window.location.reload();
});

const root = document.getElementById("root");
if (root === null) throw new Error("index.html lacks #root");
createRoot(root).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
