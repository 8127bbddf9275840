import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Two cores: PGlite start-up is CPU-bound, so keep file parallelism modest.
    maxWorkers: 2,
    reporters: process.env.CI ? ['default'] : ['default'],
  },
});
