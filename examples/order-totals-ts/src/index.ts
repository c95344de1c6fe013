// Order count and total per customer, from the `order` category: the TypeScript twin of
// examples/order-totals. `OrderPlaced {"customer", "amount"}` adds one order and the amount to
// `customer:<id>`; `OrderCancelled` with the same shape takes them away. Query `top?n=3` returns
// the customers with the largest totals, largest first (ties in customer order).

import { type Event, QueryNotFound, type State, compareKeys, defineProjection } from "@lantern/sdk";

interface OrderChange {
  customer: string;
  amount: number;
}

interface Totals {
  orders: number;
  total: number;
}

export default defineProjection({
  subscription: { categories: ["order"] },

  handle(event: Event, state: State) {
    const sign = event.type === "OrderPlaced" ? 1 : event.type === "OrderCancelled" ? -1 : 0;
    if (sign === 0) return;
    const change = event.data as OrderChange;
    if (typeof change?.customer !== "string" || !Number.isInteger(change.amount)) {
      throw new Error(`${event.type} at position ${event.position}: data does not fit`);
    }
    state.update<Totals>(`customer:${change.customer}`, { orders: 0, total: 0 }, (t) => {
      t.orders += sign;
      t.total += sign * change.amount;
    });
  },

  query(name, params, state) {
    if (name !== "top") throw new QueryNotFound(name);
    const n = Number(params.n ?? "10");
    if (!Number.isInteger(n) || n < 0) throw new Error(`parameter "n" has a bad value ${JSON.stringify(params.n)}`);
    return state
      .scan<Totals>("customer:")
      .sort((a, b) => b[1].total - a[1].total || compareKeys(a[0], b[0]))
      .slice(0, n)
      .map(([key, t]) => ({ customer: key.slice("customer:".length), total: t.total, orders: t.orders }));
  },
});
