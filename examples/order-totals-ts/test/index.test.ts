// The same cases as examples/order-totals' Rust tests, through the TypeScript harness.

import assert from "node:assert/strict";
import { test } from "node:test";

import { HandleError, QueryNotFound, testing } from "@lantern/sdk";

import orderTotals from "../src/index.js";
import kurrentTotals from "../src/kurrent.js";

test("totals follow placed and cancelled orders", () => {
  const harness = new testing.Harness(orderTotals);
  harness.append("order-1", "OrderPlaced", { customer: "c-1", amount: 250 });
  harness.append("order-2", "OrderPlaced", { customer: "c-1", amount: 100 });
  harness.append("order-2", "OrderCancelled", { customer: "c-1", amount: 100 });
  harness.append("order-3", "OrderPlaced", { customer: "c-2", amount: 999 });
  assert.deepEqual(harness.get("customer:c-1"), { orders: 1, total: 250 });
  assert.deepEqual(harness.query("top", { n: "1" }), [{ customer: "c-2", total: 999, orders: 1 }]);
  assert.throws(() => harness.query("top", { n: "x" }), /bad value/);
  assert.throws(() => harness.query("bottom"), QueryNotFound);
});

test("a malformed order fails its batch and keeps nothing of it", () => {
  const harness = new testing.Harness(orderTotals);
  assert.throws(
    () =>
      harness.batch([
        { stream: "order-1", type: "OrderPlaced", data: { customer: "c-1", amount: 5 } },
        { stream: "order-2", type: "OrderPlaced", data: { customer: "c-1", amount: "five" } },
      ]),
    (e: unknown) => e instanceof HandleError && e.position === 2,
  );
  assert.deepEqual(harness.entries(), []);
});

test("the KurrentDB-style twin keeps the same totals per customer", () => {
  const events = [
    { stream: "order-1", type: "OrderPlaced", data: { customer: "c-1", amount: 250 } },
    { stream: "order-2", type: "OrderPlaced", data: { customer: "c-1", amount: 100 } },
    { stream: "order-2", type: "OrderCancelled", data: { customer: "c-1", amount: 100 } },
    { stream: "order-3", type: "OrderPlaced", data: { customer: "c-2", amount: 999 } },
    { stream: "order-3", type: "OrderShipped", data: { customer: "c-2" } },
  ];
  const kurrent = new testing.Harness(kurrentTotals);
  const native = new testing.Harness(orderTotals);
  kurrent.batch(events);
  native.batch(events);
  for (const customer of ["c-1", "c-2"]) {
    assert.deepEqual(kurrent.query("state", { partition: customer }), native.get(`customer:${customer}`));
  }
  assert.deepEqual(kurrent.query("state", { partition: "c-1" }), { orders: 1, total: 250 });
});
