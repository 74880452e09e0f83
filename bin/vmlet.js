#!/usr/bin/env node
// The `vmlet` command. Runs the compiled build when there is one (npm run build), else the TypeScript
// sources through tsx, so a checkout works without a build step.
import { existsSync } from 'node:fs';

const compiled = new URL('../dist/cli/main.js', import.meta.url);
if (existsSync(compiled)) {
  const { main } = await import(compiled.href);
  await main();
} else {
  const { register } = await import('tsx/esm/api');
  register();
  const { main } = await import(new URL('../src/cli/main.ts', import.meta.url).href);
  await main();
}
