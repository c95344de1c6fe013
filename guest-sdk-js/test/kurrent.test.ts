// The KurrentDB-style facade: KurrentDB projection code runs unchanged on the SDK's model, with
// one state per partition, checked against what the test appended.

import assert from "node:assert/strict";
import { test } from "node:test";

import { QueryNotFound, testing } from "../src/index.js";
import { fromAll, fromCategory, fromStreams } from "../src/kurrent.js";

test("foreachStream keeps one state per stream, as KurrentDB does", () => {
  const projection = fromCategory("order")
    .foreachStream()
    .when({
      $init: () => ({ count: 0, total: 0 }),
      OrderPlaced: (s: { count: number; total: number }, e) => {
        s.count += 1;
        s.total += e.body.amount;
      },
      OrderCancelled: (s: { count: number; total: number }, e) => {
        s.count -= 1;
        s.total -= e.data.amount;
      },
    })
    .outputState();
  const harness = new testing.Harness(projection);
  harness.append("order-1", "OrderPlaced", { amount: 10 });
  harness.append("order-1", "OrderPlaced", { amount: 5 });
  harness.append("order-2", "OrderPlaced", { amount: 7 });
  harness.append("order-1", "OrderCancelled", { amount: 5 });
  harness.append("order-2", "OrderShipped", {}); // no handler: no state change
  harness.append("cart-1", "OrderPlaced", { amount: 99 }); // another category
  assert.deepEqual(harness.entries(), [
    ["partition:order-1", { count: 1, total: 10 }],
    ["partition:order-2", { count: 1, total: 7 }],
  ]);
  assert.deepEqual(harness.query("state", { partition: "order-2" }), { count: 1, total: 7 });
  assert.equal(harness.query("state", { partition: "order-9" }), null);
  assert.throws(() => harness.query("state"), /needs \?partition=/);
  assert.throws(() => harness.query("other"), QueryNotFound);
});

test("$any, handlers that return a new state, and one state without partitions", () => {
  const seen: string[] = [];
  const projection = fromAll().when({
    $init: () => 0,
    $any: (n: number, e) => {
      seen.push(`${e.streamId}@${e.sequenceNumber}:${e.eventType}#${e.position}`);
      return n + 1;
    },
  });
  const harness = new testing.Harness(projection);
  harness.append("a-1", "X", {});
  harness.append("b-1", "Y", { v: 1 });
  harness.append("a-1", "Z", []);
  assert.equal(harness.get("state"), 3);
  assert.deepEqual(seen, ["a-1@0:X#1", "b-1@0:Y#2", "a-1@1:Z#3"]);
  assert.equal(harness.query("state"), 3);
});

test("partitionBy names the partition; events it names none for are skipped", () => {
  const projection = fromStreams(["shop-1", "shop-2"])
    .partitionBy((e) => e.body.customer ?? null)
    .when({
      $init: () => ({ visits: 0 }),
      Visited: (s: { visits: number }) => {
        s.visits += 1;
      },
    });
  const harness = new testing.Harness(projection);
  harness.append("shop-1", "Visited", { customer: "c-1" });
  harness.append("shop-2", "Visited", { customer: "c-1" });
  harness.append("shop-2", "Visited", { customer: "c-2" });
  harness.append("shop-2", "Visited", {}); // no partition
  harness.append("shop-3", "Visited", { customer: "c-1" }); // not a selected stream
  assert.deepEqual(harness.entries(), [
    ["partition:c-1", { visits: 2 }],
    ["partition:c-2", { visits: 1 }],
  ]);
});
