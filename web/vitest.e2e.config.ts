import { defineConfig } from "vitest/config";

// End-to-end tests: real nexus-ca, nexus-cloud and PostgreSQL, driven through Debian's Chromium.
export default defineConfig({
  test: {
    include: ["e2e/**/*.e2e.ts"],
    testTimeout: 120_000,
    hookTimeout: 400_000,
    fileParallelism: false,
    pool: "forks",
  },
});
