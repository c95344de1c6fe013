import { Event, categoryOf } from "./event.js";
import { type Backend, type Committed, type ReadState, State } from "./state.js";
import { BatchReader } from "./wire.js";

/**
 * Which events a projection wants: events of any listed category or any listed stream (every
 * event when both lists are empty), and of a listed type (any type when that list is empty). The
 * host filters before the module runs, so unwanted events cost nothing.
 */
export interface Subscription {
  categories?: string[];
  streams?: string[];
  types?: string[];
}

/** The parameters of a query: the query string of the HTTP request. */
export type Params = Readonly<Record<string, string>>;

/** A projection: which events it wants, how it folds them, and the queries it answers. */
export interface Projection {
  subscription: Subscription;
  /**
   * Folds one event into the read model. A thrown error fails the whole batch: none of its
   * writes are kept, and the projection stops with the error as its status.
   */
  handle(event: Event, state: State): void;
  /**
   * Answers the named query (`GET /projections/{name}/query/{query}`) with any JSON value. Throw
   * `QueryNotFound` for an unknown name (404); any other error is a failed query (400).
   */
  query?(name: string, params: Params, state: ReadState): unknown;
}

/** Declares a projection (only checks it and gives it its type). */
export function defineProjection(projection: Projection): Projection {
  if (typeof projection.handle !== "function") throw new TypeError("a projection has a handle function");
  return projection;
}

/** There is no query of that name (HTTP 404 `query_not_found`). */
export class QueryNotFound extends Error {
  constructor(name: string) {
    super(`no query named ${JSON.stringify(name)}`);
    this.name = "QueryNotFound";
  }
}

/** Why a batch failed: the event it failed on, and the message. */
export class HandleError extends Error {
  constructor(
    readonly position: number,
    message: string,
  ) {
    super(message);
    this.name = "HandleError";
  }
}

/** Whether `subscription` wants an event of `stream` with type `type`. */
export function matches(subscription: Subscription, stream: string, type: string): boolean {
  const categories = subscription.categories ?? [];
  const streams = subscription.streams ?? [];
  const types = subscription.types ?? [];
  const place =
    (categories.length === 0 && streams.length === 0) ||
    categories.includes(categoryOf(stream)) ||
    streams.includes(stream);
  return place && (types.length === 0 || types.includes(type));
}

/**
 * Folds an encoded batch with `projection` over `backend`; returns the encoded writes, or throws
 * a `HandleError` naming the event it failed on. `committed` carries what the instance's earlier
 * batches read and wrote (see `Committed`). What a module's `handle` export and the test harness
 * both run.
 */
export function handleBatch(
  projection: Projection,
  batch: Uint8Array,
  backend: Backend,
  committed: Committed | null = null,
): Uint8Array {
  // Events are decoded as they are handled, each made just before its turn: none outlives its
  // `handle` unless the projection keeps it. A malformed batch fails like a failing event: no
  // write of the batch is kept.
  let reader: BatchReader;
  try {
    reader = new BatchReader(batch);
  } catch (error) {
    throw new HandleError(0, messageOf(error));
  }
  const state = new State(backend, committed);
  let last = 0;
  for (;;) {
    try {
      if (!reader.next()) break;
    } catch (error) {
      throw new HandleError(0, messageOf(error));
    }
    last = reader.position;
    const event = new Event(
      reader.position,
      reader.revision,
      reader.stream,
      reader.type,
      reader.recordedAtMicros,
      batch,
      reader.idStart,
      reader.dataStart,
      reader.dataEnd,
      reader.metadataStart,
      reader.metadataEnd,
    );
    try {
      projection.handle(event, state);
    } catch (error) {
      throw new HandleError(last, messageOf(error));
    }
  }
  try {
    return state.finish();
  } catch (error) {
    throw new HandleError(last, messageOf(error));
  }
}

/** Runs a query; `paramsJson` is a JSON object of strings. Returns the answer as JSON text. */
export function runQuery(
  projection: Projection,
  name: string,
  paramsJson: string,
  backend: Backend,
): string {
  if (projection.query === undefined) throw new QueryNotFound(name);
  const params = JSON.parse(paramsJson) as Params;
  const answer = projection.query(name, params, new State(backend));
  const text = JSON.stringify(answer === undefined ? null : answer);
  return text;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
