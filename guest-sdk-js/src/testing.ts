/**
 * Run a projection under `node --test`, without wasm: feed it events, then look at its state and
 * ask its queries. The same code paths as in the server: events go through the wire encoding, only
 * subscribed events reach the projection, and a batch's writes are applied only when the whole
 * batch succeeds.
 */

import { type Projection, handleBatch, matches, runQuery } from "./projection.js";
import { type Backend, Committed, compareKeys } from "./state.js";
import { type EventView, decodeWrites, encodeBatch } from "./wire.js";

/** An event to feed the harness. */
export interface TestEvent {
  stream: string;
  type: string;
  data: unknown;
  metadata?: unknown;
  /** When it was recorded; by default 2026-01-01T00:00:00Z plus its position in milliseconds. */
  recordedAt?: Date;
  /** Its id (32 hex digits); by default one made from its position. */
  id?: string;
}

const CLOCK_START_MS = Date.UTC(2026, 0, 1);
const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

/** A sorted in-memory read model, scanned as the host scans. */
class MapBackend implements Backend {
  readonly values = new Map<string, Uint8Array>();

  get(key: string): Uint8Array | undefined {
    return this.values.get(key);
  }

  scan(prefix: string, after: string, limit: number): Array<[string, Uint8Array]> {
    return [...this.values.keys()]
      .filter((key) => key.startsWith(prefix) && compareKeys(key, after) > 0)
      .sort(compareKeys)
      .slice(0, limit)
      .map((key) => [key, this.values.get(key)!]);
  }
}

/** A projection with an in-memory read model and a log of its own. */
export class Harness {
  private readonly backend = new MapBackend();
  private nextPosition = 1;
  private readonly revisions = new Map<string, number>();
  // As in a module: what earlier batches read and wrote, kept from batch to batch.
  private readonly committed = new Committed();

  constructor(private readonly projection: Projection) {}

  /** The position of the last event appended. */
  get position(): number {
    return this.nextPosition - 1;
  }

  /** Appends one event and folds it as a batch of one. */
  append(stream: string, type: string, data: unknown): void {
    this.batch([{ stream, type, data }]);
  }

  /**
   * Appends events and folds them as one batch, as the host does. Throws the projection's error
   * (a `HandleError` with the failing event's position) and then keeps none of the batch's writes;
   * the events stay appended, as in the log.
   */
  batch(events: TestEvent[]): void {
    const placed: EventView[] = events.map((event) => {
      const position = this.nextPosition++;
      const revision = this.revisions.get(event.stream) ?? 0;
      this.revisions.set(event.stream, revision + 1);
      const recordedAt = event.recordedAt?.getTime() ?? CLOCK_START_MS + position;
      return {
        position,
        revision,
        id: event.id === undefined ? idOf(position) : hexBytes(event.id),
        recordedAtMicros: recordedAt * 1000,
        stream: event.stream,
        type: event.type,
        data: utf8.encode(JSON.stringify(event.data)),
        metadata: event.metadata === undefined ? null : utf8.encode(JSON.stringify(event.metadata)),
      };
    });
    const wanted = placed.filter((e) => matches(this.projection.subscription, e.stream, e.type));
    const writes = handleBatch(this.projection, encodeBatch(wanted), this.backend, this.committed);
    for (const write of decodeWrites(writes)) {
      if (write.kind === "put") this.backend.values.set(write.key, write.value);
      else this.backend.values.delete(write.key);
    }
  }

  /** The value under `key`, parsed from JSON; `undefined` when there is none. */
  get(key: string): unknown {
    const bytes = this.backend.values.get(key);
    return bytes === undefined ? undefined : JSON.parse(utf8Decoder.decode(bytes));
  }

  /** Every key and value of the read model, in key order. */
  entries(): Array<[string, unknown]> {
    return this.backend.scan("", "", Number.MAX_SAFE_INTEGER).map(([k, v]) => [k, JSON.parse(utf8Decoder.decode(v))]);
  }

  /** Asks a query, with its parameters; returns the answer as the server would send it. */
  query(name: string, params: Record<string, string> = {}): unknown {
    return JSON.parse(runQuery(this.projection, name, JSON.stringify(params), this.backend));
  }
}

function idOf(position: number): Uint8Array {
  const id = new Uint8Array(16);
  new DataView(id.buffer).setBigUint64(8, BigInt(position), false);
  return id;
}

function hexBytes(hex: string): Uint8Array {
  const clean = hex.replaceAll("-", "");
  if (!/^[0-9a-fA-F]{32}$/.test(clean)) throw new RangeError(`${hex} is not 16 bytes of hex`);
  return Uint8Array.from(clean.match(/../g)!, (byte) => parseInt(byte, 16));
}
