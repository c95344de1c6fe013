// The SDK ships the WIT its modules are built against (wit/lantern.wit, for lantern-build); it
// must be the repository's own contract, byte for byte.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

test("the shipped WIT is the repository's", () => {
  const shipped = readFileSync(new URL("../../wit/lantern.wit", import.meta.url));
  const contract = readFileSync(new URL("../../../wit/lantern.wit", import.meta.url));
  assert.ok(shipped.equals(contract), "guest-sdk-js/wit/lantern.wit differs from wit/lantern.wit: copy it");
});
