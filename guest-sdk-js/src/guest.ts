/**
 * The module's side of the WIT world: the exports the host calls (`describe`, `handle`, `query`),
 * made from a projection, over the host's imports. `lantern-build` bundles this with the user's
 * projection; it is never loaded under node.
 */
import { get, log, scan } from "lantern:projection/host@0.1.1";

import { HandleError, type Projection, QueryNotFound, handleBatch, runQuery } from "./projection.js";
import { type Backend, Committed } from "./state.js";

const host: Backend = {
  get: (key) => get(key) ?? undefined,
  scan: (prefix, after, limit) => scan(prefix, after, limit),
};

/** The three exports of the `projection` world, for `projection`. */
export function exportsOf(projection: Projection) {
  // This instance's memory of the read model, from batch to batch.
  const committed = new Committed();
  return {
    describe() {
      const s = projection.subscription;
      return { categories: s.categories ?? [], streams: s.streams ?? [], types: s.types ?? [] };
    },
    handle(batch: Uint8Array): Uint8Array {
      try {
        return handleBatch(projection, batch, host, committed);
      } catch (error) {
        // The `handle-error` of the world: the event it failed on, and the message.
        const failure =
          error instanceof HandleError ? error : new HandleError(0, String((error as Error)?.message ?? error));
        throw { position: BigInt(failure.position), message: failure.message };
      }
    },
    query(name: string, params: string): string {
      try {
        return runQuery(projection, name, params, host);
      } catch (error) {
        if (error instanceof QueryNotFound) throw { tag: "not-found" };
        throw { tag: "failed", val: String((error as Error)?.message ?? error) };
      }
    },
  };
}

/** Logs a line in the server's log, with the projection's name (rate-limited by the host). */
export function hostLog(level: "trace" | "debug" | "info" | "warn" | "error", message: string): void {
  log(level, message);
}
