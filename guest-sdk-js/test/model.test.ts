// The projection model through the test harness: the batch semantics the host applies, state
// reads and writes, scans, queries and events, each checked against what the test itself fed in.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  type Backend,
  Committed,
  type Event,
  HandleError,
  type Params,
  QueryNotFound,
  type ReadState,
  type State,
  compareKeys,
  decodeWrites,
  defineProjection,
  encodeBatch,
  handleBatch,
  testing,
} from "../src/index.js";

interface Totals {
  orders: number;
  total: number;
}

/** order-totals, as examples/order-totals has it in Rust. */
const orderTotals = defineProjection({
  subscription: { categories: ["order"] },
  handle(event: Event, state: State) {
    const sign = event.type === "OrderPlaced" ? 1 : event.type === "OrderCancelled" ? -1 : 0;
    if (sign === 0) return;
    const { customer, amount } = event.data as { customer: string; amount: number };
    if (typeof customer !== "string" || typeof amount !== "number") {
      throw new Error(`${event.type} at position ${event.position}: data does not fit`);
    }
    state.update<Totals>(`customer:${customer}`, { orders: 0, total: 0 }, (t) => {
      t.orders += sign;
      t.total += sign * amount;
    });
  },
  query(name: string, params: Params, state: ReadState) {
    if (name !== "top") throw new QueryNotFound(name);
    const n = Number(params.n ?? "10");
    return state
      .scan<Totals>("customer:")
      .sort((a, b) => b[1].total - a[1].total || compareKeys(a[0], b[0]))
      .slice(0, n)
      .map(([key, t]) => ({ customer: key.slice("customer:".length), total: t.total, orders: t.orders }));
  },
});

test("order totals follow placed and cancelled orders, and only the subscribed events", () => {
  const harness = new testing.Harness(orderTotals);
  harness.append("order-1", "OrderPlaced", { customer: "c-1", amount: 250 });
  harness.append("order-2", "OrderPlaced", { customer: "c-1", amount: 100 });
  harness.append("order-3", "OrderPlaced", { customer: "c-2", amount: 70 });
  harness.append("order-2", "OrderCancelled", { customer: "c-1", amount: 100 });
  // Not in the subscription: an order event in another category never reaches the module.
  harness.append("cart-1", "OrderPlaced", { customer: "c-1", amount: 999 });
  assert.deepEqual(harness.get("customer:c-1"), { orders: 1, total: 250 });
  assert.deepEqual(harness.query("top", { n: "1" }), [{ customer: "c-1", total: 250, orders: 1 }]);
  assert.deepEqual(harness.query("top"), [
    { customer: "c-1", total: 250, orders: 1 },
    { customer: "c-2", total: 70, orders: 1 },
  ]);
  assert.throws(() => harness.query("nothing"), QueryNotFound);
  assert.equal(harness.position, 5);
});

test("a failing event fails its whole batch: none of the batch's writes are kept", () => {
  const harness = new testing.Harness(orderTotals);
  harness.append("order-1", "OrderPlaced", { customer: "c-1", amount: 5 });
  assert.throws(
    () =>
      harness.batch([
        { stream: "order-2", type: "OrderPlaced", data: { customer: "c-1", amount: 7 } },
        { stream: "order-3", type: "OrderPlaced", data: { customer: "c-9" } },
      ]),
    (error: unknown) => error instanceof HandleError && error.position === 3,
  );
  assert.deepEqual(harness.get("customer:c-1"), { orders: 1, total: 5 }, "position 2's write is gone");
  assert.equal(harness.get("customer:c-9"), undefined);
});

test("reads see the batch's start plus the batch's own writes; gets are copies", () => {
  const seen: unknown[] = [];
  const probe = defineProjection({
    subscription: {},
    handle(event: Event, state: State) {
      switch (event.type) {
        case "Put":
          state.put(event.data.key, event.data.value);
          break;
        case "Delete":
          state.delete(event.data.key);
          break;
        case "Read": {
          const value = state.get(event.data.key);
          seen.push(structuredClone(value));
          if (value !== null && typeof value === "object") value.mutated = true; // a copy: no effect
          break;
        }
        case "Count":
          state.update<number>("count", 0, (n) => n + 1);
          break;
      }
    },
  });
  const harness = new testing.Harness(probe);
  harness.append("s-1", "Put", { key: "a", value: { x: 1 } });
  harness.batch([
    { stream: "s-1", type: "Read", data: { key: "a" } },
    { stream: "s-1", type: "Read", data: { key: "a" } },
    { stream: "s-1", type: "Put", data: { key: "a", value: { x: 2 } } },
    { stream: "s-1", type: "Read", data: { key: "a" } },
    { stream: "s-1", type: "Delete", data: { key: "a" } },
    { stream: "s-1", type: "Read", data: { key: "a" } },
    { stream: "s-1", type: "Count", data: {} },
    { stream: "s-1", type: "Count", data: {} },
  ]);
  assert.deepEqual(seen, [{ x: 1 }, { x: 1 }, { x: 2 }, undefined]);
  assert.equal(harness.get("a"), undefined);
  assert.equal(harness.get("count"), 2);
});

test("update, put and delete of one key follow each other within a batch", () => {
  const seen: unknown[] = [];
  const probe = defineProjection({
    subscription: {},
    handle(event: Event, state: State) {
      const key = "n";
      if (event.type === "Put") state.put(key, event.data);
      if (event.type === "Add") state.update<number>(key, 100, (n) => n + (event.data as number));
      if (event.type === "Bump") state.update<{ n: number }>(key, { n: 0 }, (o) => void (o.n += 1));
      if (event.type === "Delete") state.delete(key);
      seen.push(state.get(key));
    },
  });
  const harness = new testing.Harness(probe);
  const e = (type: string, data: unknown) => ({ stream: "s-1", type, data });
  harness.batch([
    e("Put", 10),
    e("Add", 1), // from the put
    e("Add", 1), // from the live value
    e("Put", 0), // replaces the live value
    e("Add", 5),
    e("Delete", null),
    e("Add", 1), // from the initial value again
    e("Delete", null),
    e("Bump", null), // changed in place, nothing returned
    e("Bump", null),
  ]);
  assert.deepEqual(seen, [10, 11, 12, 0, 5, undefined, 101, undefined, { n: 1 }, { n: 2 }]);
  assert.deepEqual(harness.get("n"), { n: 2 });
  harness.append("s-1", "Bump", null); // the next batch starts from the committed value
  assert.deepEqual(seen[10], { n: 3 });
});

test("scans merge committed pages with the batch's writes, in byte order, across pages", () => {
  let scanned: Array<[string, unknown]> = [];
  const fill = defineProjection({
    subscription: {},
    handle(event: Event, state: State) {
      if (event.type === "Fill") {
        for (let i = 0; i < 2500; i++) state.put(`k:${String(i).padStart(4, "0")}`, i);
      } else {
        state.delete("k:0001");
        state.put("k:0002", "changed");
        state.put("k:zz", "new");
        state.put("other", 1);
        scanned = state.scan("k:");
      }
    },
  });
  const harness = new testing.Harness(fill);
  harness.append("s-1", "Fill", {});
  harness.append("s-1", "Scan", {});
  assert.equal(scanned.length, 2500, "2,500 - 1 deleted + 1 new, over three pages of 1,000");
  assert.deepEqual(scanned[0], ["k:0000", 0]);
  assert.deepEqual(scanned[1], ["k:0002", "changed"]);
  assert.deepEqual(scanned[scanned.length - 1], ["k:zz", "new"]);
  const keys = scanned.map(([k]) => k);
  assert.deepEqual(keys, [...keys].sort(compareKeys));
});

test("keys sort by their UTF-8 bytes, as the host's do", () => {
  const alphabet = ["a", "z", "é", "\u{ffff}", "\u{e000}", "😀", "\u{10ffff}", "\u{7f}", "\u{80}", ""];
  let seed = 7;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31);
  const words = Array.from({ length: 400 }, () =>
    Array.from({ length: random() % 4 }, () => alphabet[random() % alphabet.length]).join(""),
  );
  const byBytes = [...words].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  assert.deepEqual([...words].sort(compareKeys), byBytes);
});

test("events carry their place, id, time and parsed data", () => {
  const events: Event[] = [];
  const keep = defineProjection({ subscription: { types: ["T"] }, handle: (e) => void events.push(e) });
  const harness = new testing.Harness(keep);
  harness.batch([
    {
      stream: "shop-7",
      type: "T",
      data: { n: 1 },
      metadata: { by: "me" },
      recordedAt: new Date("2026-03-04T05:06:07.089Z"),
      id: "0192f0e5-1d2c-7a3b-8c4d-5e6f70819203",
    },
    { stream: "plain", type: "T", data: [1, 2] },
    { stream: "plain", type: "Other", data: null },
  ]);
  assert.equal(events.length, 2, "only the subscribed type");
  const [first, second] = events as [Event, Event];
  assert.equal(first.position, 1);
  assert.equal(first.revision, 0);
  assert.equal(first.stream, "shop-7");
  assert.equal(first.category, "shop");
  assert.equal(first.id, "0192f0e5-1d2c-7a3b-8c4d-5e6f70819203");
  assert.equal(first.recordedAt.toISOString(), "2026-03-04T05:06:07.089Z");
  assert.equal(first.recordedAtMicros, Date.UTC(2026, 2, 4, 5, 6, 7, 89) * 1000);
  assert.deepEqual(first.data, { n: 1 });
  assert.deepEqual(first.metadata, { by: "me" });
  assert.equal(second.category, "plain");
  assert.equal(second.revision, 0);
  assert.equal(second.metadata, null);
  assert.equal(second.dataText, "[1,2]");
  assert.equal(second.recordedAt.getTime(), Date.UTC(2026, 0, 1) + 2);
});

test("an instance reads each key from the host once, and a failed batch's changes never come back", () => {
  // A host of our own: a map, a count of `get` calls, writes applied only when a batch succeeds.
  const values = new Map<string, Uint8Array>([["n:a", new TextEncoder().encode("5")]]);
  let gets = 0;
  const backend: Backend = {
    get(key) {
      gets++;
      return values.get(key);
    },
    scan: () => [],
  };
  const adder = defineProjection({
    subscription: {},
    handle(event: Event, state: State) {
      const { key, add } = event.data as { key: string; add: number };
      state.update<{ n: number }>(key, { n: 0 }, (v) => {
        if (typeof v === "number") return { n: v + add }; // the committed "5"
        v.n += add; // in place, before a possible failure below
      });
      if (event.type === "Fail") throw new Error("no");
    },
  });
  const committed = new Committed();
  let position = 0;
  const run = (events: Array<{ type: string; key: string; add: number }>) => {
    const batch = encodeBatch(
      events.map((e) => ({
        position: ++position,
        revision: 0,
        id: new Uint8Array(16),
        recordedAtMicros: 0,
        stream: "s-1",
        type: e.type,
        data: new TextEncoder().encode(JSON.stringify({ key: e.key, add: e.add })),
        metadata: null,
      })),
    );
    for (const w of decodeWrites(handleBatch(adder, batch, backend, committed))) {
      if (w.kind === "put") values.set(w.key, w.value);
    }
  };
  const value = (key: string) => JSON.parse(new TextDecoder().decode(values.get(key)!));
  run([
    { type: "Add", key: "n:a", add: 1 },
    { type: "Add", key: "n:b", add: 2 },
    { type: "Add", key: "n:a", add: 1 },
  ]);
  assert.equal(gets, 2); // once per key
  assert.deepEqual([value("n:a"), value("n:b")], [{ n: 7 }, { n: 2 }]);
  run([
    { type: "Add", key: "n:a", add: 10 },
    { type: "Add", key: "n:b", add: 10 },
  ]);
  assert.equal(gets, 2); // none: both known from the last batch
  assert.deepEqual([value("n:a"), value("n:b")], [{ n: 17 }, { n: 12 }]);
  assert.throws(() => run([{ type: "Fail", key: "n:a", add: 100 }]), HandleError);
  run([{ type: "Add", key: "n:a", add: 1 }]);
  assert.deepEqual(value("n:a"), { n: 18 }); // not 118
  // A full memory starts again: the host is asked again.
  const small = new Committed(2);
  small.remember("x", "1");
  small.remember("y", "2");
  small.remember("z", "3");
  assert.deepEqual([small.lookup("x"), small.lookup("z"), small.size], [undefined, "3", 1]);
});
