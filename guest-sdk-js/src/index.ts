/**
 * Write Lantern projections in TypeScript or JavaScript: the same model and semantics as the Rust
 * SDK (`lantern-sdk`). A projection names the events it wants (`subscription`), folds each one
 * into the read model (`handle(event, state)`), and may answer named queries
 * (`query(name, params, state)`). During a batch, `state` reads see the batch's start plus the
 * batch's own writes; the writes reach the host once per batch, committed with the checkpoint.
 * `testing.Harness` runs a projection under `node --test` with the same batch semantics.
 */
export { Event, categoryOf } from "./event.js";
export {
  HandleError,
  type Params,
  type Projection,
  QueryNotFound,
  type Subscription,
  defineProjection,
  handleBatch,
  matches,
  runQuery,
} from "./projection.js";
export { type Backend, Committed, type ReadState, State, compareKeys } from "./state.js";
export * as testing from "./testing.js";
export * from "./wire.js";
