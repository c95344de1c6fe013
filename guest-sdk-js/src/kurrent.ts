/**
 * A KurrentDB-style facade (`fromCategory('order').foreachStream().when({...}).outputState()`)
 * over the SDK's model, so a KurrentDB (EventStoreDB) JavaScript projection ports by changing its
 * import. Each selector makes a `Projection` for `lantern-build`:
 *
 * ```ts
 * import { fromCategory } from "@lantern/sdk/kurrent";
 * export default fromCategory("order")
 *   .foreachStream()
 *   .when({
 *     $init: () => ({ count: 0, total: 0 }),
 *     OrderPlaced: (s, e) => { s.count += 1; s.total += e.body.amount; },
 *   })
 *   .outputState();
 * ```
 *
 * Covered: `fromAll`, `fromCategory`, `fromStream`, `fromStreams`; `foreachStream`, `partitionBy`;
 * `when` with `$init`, `$any` and handlers by event type (a handler changes the state in place or
 * returns the new one); `outputState` (a no-op: the state is always the read model); the event
 * fields `body` (parsed data), `data`, `bodyRaw`, `metadata`, `eventType`, `streamId`,
 * `sequenceNumber`, `position`, `isJson`, `partition`. The state of a partition is stored under
 * `partition:<name>` (`state` without partitions) and read with the `state` query
 * (`GET /projections/NAME/query/state?partition=order-42`) or as a key.
 *
 * Not covered (KurrentDB features with no Lantern equivalent, or not yet): `emit`, `linkTo`,
 * `copyTo` and `outputTo` (a projection here never writes to the log), `$deleted`,
 * `$initShared`, `transformBy`/`filterBy`, `fromStreamsMatching`, bi-state, `options({...})` (taken
 * and ignored), and `$by_category`-style system projections.
 */

import type { Event } from "./event.js";
import { type Params, type Projection, QueryNotFound, type Subscription } from "./projection.js";
import type { ReadState, State } from "./state.js";

/** An event as a KurrentDB projection handler sees it. */
export interface KurrentEvent {
  /** The data, parsed from JSON. */
  body: any;
  /** The same as `body`. */
  data: any;
  /** The data as JSON text. */
  bodyRaw: string;
  /** The metadata, parsed (`null` when there is none). */
  metadata: any;
  eventType: string;
  streamId: string;
  /** The event's revision in its stream. */
  sequenceNumber: number;
  /** Its position in the global log. */
  position: number;
  isJson: true;
  /** The partition the handler runs for (the stream, with `foreachStream`). */
  partition: string;
}

/** What `when` takes: `$init`, `$any`, and a handler per event type. */
export interface Handlers<S> {
  $init?: () => S;
  $any?: (state: S, event: KurrentEvent) => S | void;
  [eventType: string]: ((state: S, event: KurrentEvent) => S | void) | (() => S) | undefined;
}

type Partitioner = (event: KurrentEvent) => string | null | undefined;

/** After `when`: the projection (also a `Projection` itself), with `outputState` for porting. */
export interface KurrentProjection extends Projection {
  /** KurrentDB's marker that the state is the output: here it always is. */
  outputState(): KurrentProjection;
}

/** A selection of events, before `when`. */
export class Selector {
  private partitioner: Partitioner | null = null;

  constructor(private readonly subscription: Subscription) {}

  /** One state per stream. */
  foreachStream(): this {
    this.partitioner = (event) => event.streamId;
    return this;
  }

  /** One state per partition that `by` names (events for which it names none are skipped). */
  partitionBy(by: Partitioner): this {
    this.partitioner = by;
    return this;
  }

  /** Taken for compatibility, ignored. */
  options(_options: Record<string, unknown>): this {
    return this;
  }

  /** The handlers: the projection. */
  when<S = any>(handlers: Handlers<S>): KurrentProjection {
    return makeProjection(this.subscription, this.partitioner, handlers);
  }
}

/** Every event of the log. */
export function fromAll(): Selector {
  return new Selector({});
}

/** The events of streams of one category (`order` for `order-42`). */
export function fromCategory(category: string): Selector {
  return new Selector({ categories: [category] });
}

/** The events of one stream. */
export function fromStream(stream: string): Selector {
  return new Selector({ streams: [stream] });
}

/** The events of these streams. */
export function fromStreams(...streams: Array<string | string[]>): Selector {
  return new Selector({ streams: streams.flat() });
}

function keyOf(partition: string | null): string {
  return partition === null ? "state" : `partition:${partition}`;
}

function makeProjection<S>(
  subscription: Subscription,
  partitioner: Partitioner | null,
  handlers: Handlers<S>,
): KurrentProjection {
  const init = (): S => (handlers.$init ? handlers.$init() : ({} as S));
  const projection: KurrentProjection = {
    subscription,
    handle(event: Event, state: State) {
      const specific = handlers[event.type];
      const any = handlers.$any;
      if ((typeof specific !== "function" || event.type.startsWith("$")) && !any) return;
      const view: KurrentEvent = {
        get body() {
          return event.data;
        },
        get data() {
          return event.data;
        },
        get bodyRaw() {
          return event.dataText;
        },
        get metadata() {
          return event.metadata;
        },
        eventType: event.type,
        streamId: event.stream,
        sequenceNumber: event.revision,
        position: event.position,
        isJson: true,
        partition: "",
      };
      let partition: string | null = null;
      if (partitioner !== null) {
        const named = partitioner(view);
        if (named === null || named === undefined) return;
        partition = String(named);
      }
      view.partition = partition ?? "";
      state.update<S>(keyOf(partition), init(), (current) => {
        let next = current;
        if (typeof specific === "function" && !event.type.startsWith("$")) {
          const returned = (specific as (s: S, e: KurrentEvent) => S | void)(next, view);
          if (returned !== undefined) next = returned;
        } else if (any) {
          const returned = any(next, view);
          if (returned !== undefined) next = returned;
        }
        return next;
      });
    },
    query(name: string, params: Params, state: ReadState) {
      if (name !== "state") throw new QueryNotFound(name);
      const partition = partitioner === null ? null : (params.partition ?? null);
      if (partitioner !== null && partition === null) {
        throw new Error('the "state" query of a partitioned projection needs ?partition=');
      }
      return state.get(keyOf(partition)) ?? null;
    },
    outputState() {
      return projection;
    },
  };
  return projection;
}
