// The shared test vectors (wire/vectors/vectors.json, made by wire/vectors/generate.py from the
// documented layout): the TypeScript encoders must produce exactly those bytes and the decoders
// read them back, as the Rust crate's tests check for lantern-wire.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  DecodeError,
  type EventView,
  type UpcastView,
  type WriteView,
  decodeBatch,
  decodeUpcasts,
  decodeWrites,
  encodeBatch,
  encodeUpcasts,
  encodeWrites,
} from "../src/index.js";

interface VectorEvent {
  position: number;
  revision: number;
  id: string;
  recorded_at_micros: number;
  stream: string;
  type: string;
  data: string;
  metadata: string | null;
}

// dist/test/wire.test.js -> the repository's wire/vectors/vectors.json
const vectors = JSON.parse(
  readFileSync(new URL("../../../wire/vectors/vectors.json", import.meta.url), "utf8"),
);

const text = new TextEncoder();
const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString("hex");
const unhex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, "hex"));

function event(e: VectorEvent): EventView {
  return {
    position: e.position,
    revision: e.revision,
    id: unhex(e.id),
    recordedAtMicros: e.recorded_at_micros,
    stream: e.stream,
    type: e.type,
    data: text.encode(e.data),
    metadata: e.metadata === null ? null : text.encode(e.metadata),
  };
}

/** Views into a bigger buffer compare equal to fresh arrays with the same bytes. */
function plain<T>(value: T): T {
  return JSON.parse(
    JSON.stringify(value, (_, v) => (v instanceof Uint8Array ? hex(v) : v)),
  ) as T;
}

test("batches match the shared vectors", () => {
  assert.ok(vectors.batches.length >= 4);
  for (const vector of vectors.batches) {
    const events = (vector.events as VectorEvent[]).map(event);
    assert.equal(hex(encodeBatch(events, vector.legacy)), vector.hex, `encoding ${vector.name}`);
    if (!vector.legacy) {
      assert.deepEqual(plain(decodeBatch(unhex(vector.hex))), plain(events), `decoding ${vector.name}`);
    }
  }
  for (const bad of vectors.invalid_batches) {
    assert.throws(() => decodeBatch(unhex(bad.hex)), DecodeError, bad.why);
  }
});

test("writes match the shared vectors", () => {
  for (const vector of vectors.writes) {
    const writes: WriteView[] = vector.writes.map(
      (w: { put?: [string, string]; delete?: string }): WriteView =>
        w.put
          ? { kind: "put", key: w.put[0], value: text.encode(w.put[1]) }
          : { kind: "delete", key: w.delete! },
    );
    assert.equal(hex(encodeWrites(writes)), vector.hex, `encoding ${vector.name}`);
    assert.deepEqual(plain(decodeWrites(unhex(vector.hex))), plain(writes));
  }
  for (const bad of vectors.invalid_writes) {
    assert.throws(() => decodeWrites(unhex(bad.hex)), DecodeError, bad.why);
  }
});

test("upcasts match the shared vectors", () => {
  for (const vector of vectors.upcasts) {
    const upcasts: UpcastView[] = vector.upcasts.map(
      (u: { type: string; data: string; metadata: string | null } | null): UpcastView =>
        u === null
          ? { kind: "unchanged" }
          : {
              kind: "changed",
              type: u.type,
              data: text.encode(u.data),
              metadata: u.metadata === null ? null : text.encode(u.metadata),
            },
    );
    assert.equal(hex(encodeUpcasts(upcasts)), vector.hex, `encoding ${vector.name}`);
    assert.deepEqual(plain(decodeUpcasts(unhex(vector.hex))), plain(upcasts));
  }
});

test("numbers a JavaScript number cannot hold are refused, not rounded", () => {
  // A whole, valid event, then each of its three numbers set to 2^53 in turn.
  const valid = encodeBatch([(vectors.batches[1].events as VectorEvent[]).map(event)[0]!]);
  for (const offset of [4, 12, 36]) {
    const tooBig = valid.slice();
    new DataView(tooBig.buffer).setBigUint64(offset, 2n ** 53n, true);
    assert.throws(() => decodeBatch(tooBig), /9007199254740992 is past 2\^53 - 1/, `offset ${offset}`);
  }
  const base = (vectors.batches[1].events as VectorEvent[]).map(event)[0]!;
  assert.throws(() => encodeBatch([{ ...base, position: 2 ** 53 }]), RangeError);
});
