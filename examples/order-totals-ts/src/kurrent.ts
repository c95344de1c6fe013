// The same totals written as a KurrentDB (EventStoreDB) projection, through the SDK's facade: a
// KurrentDB user's projection ports by changing its import. Each customer is a partition, stored
// under `partition:<customer>`; `GET /projections/NAME/query/state?partition=c-1` answers
// `{"orders", "total"}`, the value `order-totals` keeps under `customer:c-1`.

import { fromCategory } from "@lantern/sdk/kurrent";

interface Totals {
  orders: number;
  total: number;
}

export default fromCategory("order")
  .partitionBy((e) => e.body.customer)
  .when<Totals>({
    $init: () => ({ orders: 0, total: 0 }),
    OrderPlaced(s, e) {
      s.orders += 1;
      s.total += e.body.amount;
    },
    OrderCancelled(s, e) {
      s.orders -= 1;
      s.total -= e.body.amount;
    },
  })
  .outputState();
