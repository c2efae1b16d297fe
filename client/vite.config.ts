import react from "@vitejs/plugin-react";
import { defineConfig } from "vitest/config";

// `npm run dev` serves the client with hot reload and forwards the API to a Parley
// server (`make run`, or PARLEY_URL); the built client (`npm run build`, dist/) is
// served by the Parley server itself at `/`.
const backend = process.env.PARLEY_URL ?? "http://127.0.0.1:8000";

export default defineConfig({
  plugins: [react()],
  // No source maps in the served build: they would publish the sources as written.
  build: { outDir: "dist", sourcemap: false },
  server: {
    proxy: {
      "/token": backend,
      "/refresh_token": backend,
      "/owner": backend,
      "/conversations": backend,
      "/session": backend,
      "/healthz": backend,
      "/readyz": backend,
      "/chat": { target: backend.replace(/^http/, "ws"), ws: true },
    },
  },
  test: {
    environment: "node",
    include: ["src/**/*.test.ts"],
  },
});
