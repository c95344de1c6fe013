#!/usr/bin/env node
// lantern-build ENTRY -o OUT.wasm: bundles a TypeScript or JavaScript projection (its default
// export, made with defineProjection) with the SDK, then makes it a WebAssembly component of the
// `projection` world with componentize-js, with the WASI features a projection must not use
// (clocks, randomness, HTTP) switched off. Only stdout and stderr stay, so that a failing module's
// message reaches the server's log.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { componentize } from "@bytecodealliance/componentize-js";
import { build } from "esbuild";

const usage = "usage: lantern-build ENTRY.ts -o OUT.wasm";
let args;
try {
  args = parseArgs({ allowPositionals: true, options: { out: { type: "string", short: "o" } } });
} catch (error) {
  console.error(`lantern-build: ${error.message}\n${usage}`);
  process.exit(2);
}
const [entry] = args.positionals;
if (!entry || !args.values.out || args.positionals.length !== 1) {
  console.error(`lantern-build: ${usage}`);
  process.exit(2);
}
const sdk = dirname(dirname(fileURLToPath(import.meta.url)));
const work = await mkdtemp(join(tmpdir(), "lantern-build-"));
try {
  const main = join(work, "main.js");
  await writeFile(
    main,
    `import projection from ${JSON.stringify(resolve(entry))};\n` +
      `import { exportsOf } from ${JSON.stringify(join(sdk, "dist/src/guest.js"))};\n` +
      `const exported = exportsOf(projection);\n` +
      `export const describe = exported.describe;\n` +
      `export const handle = exported.handle;\n` +
      `export const query = exported.query;\n`,
  );
  const bundle = join(work, "bundle.js");
  await build({
    entryPoints: [main],
    bundle: true,
    format: "esm",
    platform: "neutral",
    target: "es2022",
    outfile: bundle,
    external: ["lantern:*"],
    logLevel: "error",
  });
  const started = Date.now();
  const { component } = await componentize({
    sourcePath: bundle,
    witPath: join(sdk, "wit/lantern.wit"),
    worldName: "projection",
    disableFeatures: ["random", "clocks", "http", "fetch-event"],
  });
  await writeFile(args.values.out, component);
  console.log(
    `${args.values.out}: ${(component.length / 1e6).toFixed(1)} MB in ${((Date.now() - started) / 1000).toFixed(1)} s`,
  );
} catch (error) {
  console.error(`lantern-build: ${error.message ?? error}`);
  process.exitCode = 1;
} finally {
  await rm(work, { recursive: true, force: true });
}
