import { type WriteView, encodeWrites } from "./wire.js";

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

/** Where committed values come from: the host (in a module) or the test harness. */
export interface Backend {
  /** The JSON text under `key`, if any. */
  get(key: string): Uint8Array | undefined;
  /** Up to `limit` entries with keys starting with `prefix` and greater than `after`, in key order. */
  scan(prefix: string, after: string, limit: number): Array<[string, Uint8Array]>;
}

/** What a query sees: the read model, read-only. */
export interface ReadState {
  /** The value under `key`, parsed from JSON; `undefined` when there is none. */
  get<T = any>(key: string): T | undefined;
  /** Every key starting with `prefix`, in key order, with its value parsed from JSON. */
  scan<T = any>(prefix: string): Array<[string, T]>;
}

/** A value written in this batch: JSON text (put), a live value (update), or a delete. */
type Written = { text: string } | { live: unknown } | null;

const SCAN_PAGE = 1000;

/**
 * The read model as a batch sees it: the committed values as of the batch's start, overlaid with
 * the batch's own writes. The writes go to the host once, when the batch ends, and are kept only
 * if the whole batch succeeds.
 */
export class State implements ReadState {
  private readonly writes = new Map<string, Written>();

  constructor(private readonly backend: Backend) {}

  get<T = any>(key: string): T | undefined {
    const written = this.writes.get(key);
    if (written === undefined) {
      const bytes = this.backend.get(key);
      return bytes === undefined ? undefined : parse<T>(key, utf8Decoder.decode(bytes));
    }
    if (written === null) return undefined;
    // A copy: changing what `get` returned never changes the state behind `put`'s back.
    return parse<T>(key, "text" in written ? written.text : json(key, written.live));
  }

  /** Stores `value` (as JSON) under `key`. */
  put(key: string, value: unknown): void {
    this.writes.set(key, { text: json(key, value) });
  }

  /** Removes `key`. */
  delete(key: string): void {
    this.writes.set(key, null);
  }

  /**
   * Reads the value under `key` (a copy of `initial` when there is none), hands it to `change`,
   * and stores what `change` returns, or the value itself when it returns nothing (so objects may
   * be changed in place). Within a batch the value stays parsed: many updates of one key cost one
   * parse and one serialization.
   */
  update<T>(key: string, initial: T, change: (value: T) => T | void): void {
    const written = this.writes.get(key);
    let value: T;
    if (written !== undefined && written !== null && "live" in written) {
      value = written.live as T;
    } else {
      const current = this.get<T>(key);
      value = current === undefined ? copy(key, initial) : current;
    }
    const changed = change(value);
    this.writes.set(key, { live: changed === undefined ? value : changed });
  }

  scan<T = any>(prefix: string): Array<[string, T]> {
    const merged = new Map<string, string | null>();
    let after = "";
    for (;;) {
      const page = this.backend.scan(prefix, after, SCAN_PAGE);
      for (const [key, bytes] of page) merged.set(key, utf8Decoder.decode(bytes));
      const last = page[page.length - 1];
      if (page.length < SCAN_PAGE || last === undefined) break;
      after = last[0];
    }
    for (const [key, written] of this.writes) {
      if (!key.startsWith(prefix)) continue;
      merged.set(key, written === null ? null : "text" in written ? written.text : json(key, written.live));
    }
    const keys = [...merged.keys()].sort(compareKeys);
    const out: Array<[string, T]> = [];
    for (const key of keys) {
      const text = merged.get(key);
      if (text !== null && text !== undefined) out.push([key, parse<T>(key, text)]);
    }
    return out;
  }

  /** The batch's writes in the wire encoding, in key order, for the host. */
  finish(): Uint8Array {
    const keys = [...this.writes.keys()].sort(compareKeys);
    const writes: WriteView[] = keys.map((key): WriteView => {
      const written = this.writes.get(key)!;
      if (written === null) return { kind: "delete", key };
      const text = "text" in written ? written.text : json(key, written.live);
      return { kind: "put", key, value: utf8.encode(text) };
    });
    return encodeWrites(writes);
  }
}

/**
 * Keys compare as the host's do: by their UTF-8 bytes, which is code point order. UTF-16 code
 * units give the same order except between a surrogate (a code point past U+FFFF) and a unit from
 * U+E000 up, which the first difference settles.
 */
export function compareKeys(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    const xSurrogate = x >= 0xd800 && x <= 0xdfff;
    const ySurrogate = y >= 0xd800 && y <= 0xdfff;
    if (xSurrogate && !ySurrogate && y >= 0xe000) return 1;
    if (ySurrogate && !xSurrogate && x >= 0xe000) return -1;
    return x - y;
  }
  return a.length - b.length;
}

function json(key: string, value: unknown): string {
  const text = JSON.stringify(value);
  if (text === undefined) throw new Error(`the value for ${JSON.stringify(key)} is not JSON`);
  return text;
}

function parse<T>(key: string, text: string): T {
  try {
    return JSON.parse(text) as T;
  } catch (error) {
    throw new Error(`value of ${JSON.stringify(key)}: ${(error as Error).message}`);
  }
}

function copy<T>(key: string, value: T): T {
  return parse<T>(key, json(key, value));
}
