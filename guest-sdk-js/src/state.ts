import { WritesEncoder } from "./wire.js";

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

/**
 * A key written in this batch: deleted, JSON text (`put`), or a live value (`update`, which
 * changes it in place until the batch ends). One mutable slot per key, so repeated updates of a
 * key allocate nothing.
 */
interface Slot {
  kind: SlotKind;
  value: unknown;
}

const enum SlotKind {
  Deleted,
  Text,
  Live,
}

const SCAN_PAGE = 1000;

/**
 * The read model's values as this instance last read or wrote them (JSON text; `null` for none),
 * kept from batch to batch: a key read once costs no host call in later batches (a host call
 * costs a JavaScript module about 13 us, more than the rest of a typical event's work). True
 * because the host never hands an instance another batch after one that failed or whose writes
 * it did not commit (the WIT's `handle`); a batch's writes are remembered only once all of them
 * are encoded. Emptied when it reaches `limit` keys.
 */
export class Committed {
  private readonly values = new Map<string, string | null>();

  constructor(private readonly limit = 100_000) {}

  /** The value's text, `null` for no value, `undefined` when not known here. */
  lookup(key: string): string | null | undefined {
    return this.values.get(key);
  }

  remember(key: string, text: string | null): void {
    if (this.values.size >= this.limit && !this.values.has(key)) this.values.clear();
    this.values.set(key, text);
  }

  /** Keys known. */
  get size(): number {
    return this.values.size;
  }
}

/**
 * The read model as a batch sees it: the committed values as of the batch's start, overlaid with
 * the batch's own writes. The writes go to the host once, when the batch ends, and are kept only
 * if the whole batch succeeds.
 */
export class State implements ReadState {
  private readonly writes = new Map<string, Slot>();

  /** `committed`: what earlier batches of this instance read and wrote (none for a query). */
  constructor(
    private readonly backend: Backend,
    private readonly committed: Committed | null = null,
  ) {}

  get<T = any>(key: string): T | undefined {
    const slot = this.writes.get(key);
    if (slot === undefined) {
      let text = this.committed?.lookup(key);
      if (text === undefined) {
        const bytes = this.backend.get(key);
        text = bytes === undefined ? null : utf8Decoder.decode(bytes);
        this.committed?.remember(key, text);
      }
      return text === null ? undefined : parse<T>(key, text);
    }
    // A copy: changing what `get` returned never changes the state behind `put`'s back.
    return slot.kind === SlotKind.Deleted ? undefined : parse<T>(key, textOf(key, slot));
  }

  /** Stores `value` (as JSON) under `key`. */
  put(key: string, value: unknown): void {
    this.write(key, SlotKind.Text, json(key, value));
  }

  /** Removes `key`. */
  delete(key: string): void {
    this.write(key, SlotKind.Deleted, undefined);
  }

  /**
   * Reads the value under `key` (a copy of `initial` when there is none), hands it to `change`,
   * and stores what `change` returns, or the value itself when it returns nothing (so objects may
   * be changed in place). Within a batch the value stays parsed: many updates of one key cost one
   * parse and one serialization.
   */
  update<T>(key: string, initial: T, change: (value: T) => T | void): void {
    const slot = this.writes.get(key);
    if (slot !== undefined && slot.kind === SlotKind.Live) {
      const changed = change(slot.value as T);
      if (changed !== undefined) slot.value = changed;
      return;
    }
    const current = this.get<T>(key);
    const value = current === undefined ? copy(key, initial) : current;
    const changed = change(value);
    this.write(key, SlotKind.Live, changed === undefined ? value : changed);
  }

  private write(key: string, kind: SlotKind, value: unknown): void {
    const slot = this.writes.get(key);
    if (slot === undefined) {
      this.writes.set(key, { kind, value });
    } else {
      slot.kind = kind;
      slot.value = value;
    }
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
    for (const [key, slot] of this.writes) {
      if (!key.startsWith(prefix)) continue;
      merged.set(key, slot.kind === SlotKind.Deleted ? null : textOf(key, slot));
    }
    const keys = [...merged.keys()].sort(compareKeys);
    const out: Array<[string, T]> = [];
    for (const key of keys) {
      const text = merged.get(key);
      if (text !== null && text !== undefined) out.push([key, parse<T>(key, text)]);
    }
    return out;
  }

  /**
   * The batch's writes in the wire encoding, for the host, in the order they were first written
   * (the host sorts them for its B-tree, natively: faster than here).
   */
  finish(): Uint8Array {
    const keys = [...this.writes.keys()];
    const texts: Array<string | null> = [];
    const out = new WritesEncoder();
    for (const key of keys) {
      const slot = this.writes.get(key)!;
      if (slot.kind === SlotKind.Deleted) {
        out.delete(key);
        texts.push(null);
      } else {
        const text = textOf(key, slot);
        out.put(key, text);
        texts.push(text);
      }
    }
    const encoded = out.finish();
    if (this.committed !== null) {
      for (let i = 0; i < keys.length; i++) this.committed.remember(keys[i]!, texts[i]!);
    }
    return encoded;
  }
}

function textOf(key: string, slot: Slot): string {
  return slot.kind === SlotKind.Text ? (slot.value as string) : json(key, slot.value);
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
