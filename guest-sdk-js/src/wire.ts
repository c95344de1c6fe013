/**
 * The compact encoding that crosses the host/guest boundary as one `list<u8>`: the TypeScript twin
 * of the `lantern-wire` crate (`wire/src/lib.rs` documents the layout). Both are checked against the
 * same test vectors (`wire/vectors/vectors.json`), so they cannot drift apart.
 *
 * All integers are little-endian. Strings and byte strings are a `u32` length then the bytes.
 * - batch: `u32 count`, then per event: `u64 position`, `u64 revision`, `[u8; 16] id`,
 *   `u64 recorded_at_micros`, `str stream`, `str type`, `bytes data`, `u8 has_metadata`,
 *   [`bytes metadata`].
 * - writes: `u32 count`, then per write: `u8 kind` (1 put, 0 delete), `str key`, [`bytes value`].
 * - upcasts: `u32 count`, then per event: `u8 kind` (0 unchanged, 1 changed), and for a changed one
 *   `str type`, `bytes data`, `u8 has_metadata`, [`bytes metadata`].
 *
 * Numbers beyond 2^53 - 1 (which a JavaScript number cannot hold exactly) are refused when
 * decoding: a log that long is far beyond anything a store holds.
 */

/** An event as the host hands it over; `data` and `metadata` are JSON text. */
export interface EventView {
  position: number;
  revision: number;
  /** The event's id: a UUID's 16 bytes. */
  id: Uint8Array;
  /** When it was recorded: microseconds since the Unix epoch. */
  recordedAtMicros: number;
  stream: string;
  type: string;
  data: Uint8Array;
  metadata: Uint8Array | null;
}

/** One write of a batch: a put of JSON text under a key, or a delete of a key. */
export type WriteView =
  | { kind: "put"; key: string; value: Uint8Array }
  | { kind: "delete"; key: string };

/** An upcaster's answer for one event: unchanged, or its new type, data and metadata. */
export type UpcastView =
  | { kind: "unchanged" }
  | { kind: "changed"; type: string; data: Uint8Array; metadata: Uint8Array | null };

/** The bytes are not a valid encoding. */
export class DecodeError extends Error {
  constructor(reason: string) {
    super(`malformed wire data: ${reason}`);
    this.name = "DecodeError";
  }
}

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder("utf-8", { fatal: true });

/** A growable byte buffer that writes the encoding's primitives. */
class Writer {
  private bytes = new Uint8Array(256);
  private view = new DataView(this.bytes.buffer);
  length = 0;

  private reserve(extra: number): void {
    if (this.length + extra <= this.bytes.length) return;
    let size = this.bytes.length * 2;
    while (size < this.length + extra) size *= 2;
    const grown = new Uint8Array(size);
    grown.set(this.bytes.subarray(0, this.length));
    this.bytes = grown;
    this.view = new DataView(grown.buffer);
  }

  u8(n: number): void {
    this.reserve(1);
    this.bytes[this.length++] = n;
  }

  u32(n: number): void {
    this.reserve(4);
    this.view.setUint32(this.length, n, true);
    this.length += 4;
  }

  u64(n: number): void {
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new RangeError(`${n} is not a whole number from 0 to 2^53 - 1`);
    }
    this.reserve(8);
    this.view.setBigUint64(this.length, BigInt(n), true);
    this.length += 8;
  }

  raw(bytes: Uint8Array): void {
    this.reserve(bytes.length);
    this.bytes.set(bytes, this.length);
    this.length += bytes.length;
  }

  bytesField(bytes: Uint8Array): void {
    this.u32(bytes.length);
    this.raw(bytes);
  }

  /** A string as UTF-8, encoded straight into the buffer. */
  str(s: string): void {
    // At most three bytes per UTF-16 code unit; the length is written once the size is known.
    this.reserve(4 + 3 * s.length);
    const { written } = utf8.encodeInto(s, this.bytes.subarray(this.length + 4));
    this.view.setUint32(this.length, written, true);
    this.length += 4 + written;
  }

  /** Writes `count` over the first four bytes and returns the encoding. */
  finish(count: number): Uint8Array {
    this.view.setUint32(0, count, true);
    return this.bytes.slice(0, this.length);
  }
}

/** Reads the encoding's primitives off the front of a byte array. */
class Reader {
  private offset = 0;
  private readonly view: DataView;

  constructor(private readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  private need(n: number): void {
    if (this.offset + n > this.bytes.length) throw new DecodeError("truncated");
  }

  u8(): number {
    this.need(1);
    return this.bytes[this.offset++]!;
  }

  u32(): number {
    this.need(4);
    const n = this.view.getUint32(this.offset, true);
    this.offset += 4;
    return n;
  }

  take(n: number): Uint8Array {
    this.need(n);
    const out = this.bytes.subarray(this.offset, this.offset + n);
    this.offset += n;
    return out;
  }

  bytesField(): Uint8Array {
    return this.take(this.u32());
  }

  str(): string {
    try {
      return utf8Strict.decode(this.bytesField());
    } catch (error) {
      if (error instanceof DecodeError) throw error;
      throw new DecodeError("string is not UTF-8");
    }
  }

  optionalBytes(): Uint8Array | null {
    switch (this.u8()) {
      case 0:
        return null;
      case 1:
        return this.bytesField();
      default:
        throw new DecodeError("bad metadata flag");
    }
  }

  end(): void {
    if (this.offset !== this.bytes.length) throw new DecodeError("trailing bytes");
  }
}

const MAX_SAFE_HIGH = 0x1fffff; // the high 32 bits of 2^53 - 1

/**
 * Reads an encoded batch one event at a time, with no object per field: after `next()` returns
 * true its fields describe the next event (`data` and `metadata` as offsets into `bytes`). The
 * one decoder of batches: `decodeBatch` and the projection runtime are both built on it. It checks
 * as it goes; the trailing-bytes check comes with the `next()` that returns false.
 */
export class BatchReader {
  readonly bytes: Uint8Array;
  private readonly view: DataView;
  private offset = 4;
  private remaining: number;
  position = 0;
  revision = 0;
  idStart = 0;
  recordedAtMicros = 0;
  stream = "";
  type = "";
  dataStart = 0;
  dataEnd = 0;
  /** -1 when the event has no metadata. */
  metadataStart = -1;
  metadataEnd = -1;

  constructor(bytes: Uint8Array) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (bytes.length < 4) throw new DecodeError("truncated");
    this.remaining = this.view.getUint32(0, true);
  }

  /** Moves to the next event; false after the last (and then the batch must have ended). */
  next(): boolean {
    if (this.remaining === 0) {
      if (this.offset !== this.bytes.length) throw new DecodeError("trailing bytes");
      return false;
    }
    this.remaining--;
    const view = this.view;
    const length = this.bytes.length;
    let o = this.offset;
    // Fixed part: position, revision, id, recorded time, then the stream's length.
    if (o + 44 > length) throw new DecodeError("truncated");
    this.position = u64(view, o);
    this.revision = u64(view, o + 8);
    this.idStart = o + 16;
    this.recordedAtMicros = u64(view, o + 32);
    let n = view.getUint32(o + 40, true);
    o += 44;
    if (o + n + 4 > length) throw new DecodeError("truncated");
    this.stream = text(this.bytes, o, o + n);
    o += n;
    n = view.getUint32(o, true);
    o += 4;
    if (o + n + 4 > length) throw new DecodeError("truncated");
    this.type = text(this.bytes, o, o + n);
    o += n;
    n = view.getUint32(o, true);
    o += 4;
    if (o + n + 1 > length) throw new DecodeError("truncated");
    this.dataStart = o;
    this.dataEnd = o + n;
    o += n;
    const flag = this.bytes[o++];
    if (flag === 0) {
      this.metadataStart = -1;
      this.metadataEnd = -1;
    } else if (flag === 1) {
      if (o + 4 > length) throw new DecodeError("truncated");
      n = view.getUint32(o, true);
      o += 4;
      if (o + n > length) throw new DecodeError("truncated");
      this.metadataStart = o;
      this.metadataEnd = o + n;
      o += n;
    } else {
      throw new DecodeError("bad metadata flag");
    }
    this.offset = o;
    return true;
  }
}

function u64(view: DataView, offset: number): number {
  const high = view.getUint32(offset + 4, true);
  if (high > MAX_SAFE_HIGH) {
    throw new DecodeError(`${view.getBigUint64(offset, true)} is past 2^53 - 1`);
  }
  return high * 0x100000000 + view.getUint32(offset, true);
}

function text(bytes: Uint8Array, start: number, end: number): string {
  try {
    return utf8Strict.decode(bytes.subarray(start, end));
  } catch {
    throw new DecodeError("string is not UTF-8");
  }
}

/** Decodes an encoded batch. `data` and `metadata` are views into `bytes`, not copies. */
export function decodeBatch(bytes: Uint8Array): EventView[] {
  const reader = new BatchReader(bytes);
  const events: EventView[] = [];
  while (reader.next()) {
    events.push({
      position: reader.position,
      revision: reader.revision,
      id: bytes.subarray(reader.idStart, reader.idStart + 16),
      recordedAtMicros: reader.recordedAtMicros,
      stream: reader.stream,
      type: reader.type,
      data: bytes.subarray(reader.dataStart, reader.dataEnd),
      metadata: reader.metadataStart < 0 ? null : bytes.subarray(reader.metadataStart, reader.metadataEnd),
    });
  }
  return events;
}

/**
 * Encodes a batch (what the host sends; the test harness uses it). `legacy` leaves out the id and
 * the recorded time, as for modules built against WIT `lantern:projection@0.1.0`.
 */
export function encodeBatch(events: readonly EventView[], legacy = false): Uint8Array {
  const out = new Writer();
  out.u32(0);
  for (const event of events) {
    out.u64(event.position);
    out.u64(event.revision);
    if (!legacy) {
      if (event.id.length !== 16) throw new RangeError("an event id has 16 bytes");
      out.raw(event.id);
      out.u64(event.recordedAtMicros);
    }
    out.str(event.stream);
    out.str(event.type);
    out.bytesField(event.data);
    if (event.metadata === null) {
      out.u8(0);
    } else {
      out.u8(1);
      out.bytesField(event.metadata);
    }
  }
  return out.finish(events.length);
}

/** Encodes writes one at a time, with no object per write (what a batch's end runs). */
export class WritesEncoder {
  private readonly out = new Writer();
  private count = 0;

  constructor() {
    this.out.u32(0);
  }

  /** A put of JSON text under `key`. */
  put(key: string, json: string): void {
    this.out.u8(1);
    this.out.str(key);
    this.out.str(json);
    this.count++;
  }

  /** A put of JSON text, as its UTF-8 bytes, under `key`. */
  putBytes(key: string, value: Uint8Array): void {
    this.out.u8(1);
    this.out.str(key);
    this.out.bytesField(value);
    this.count++;
  }

  /** A delete of `key`. */
  delete(key: string): void {
    this.out.u8(0);
    this.out.str(key);
    this.count++;
  }

  finish(): Uint8Array {
    return this.out.finish(this.count);
  }
}

/** Encodes a batch's writes. */
export function encodeWrites(writes: readonly WriteView[]): Uint8Array {
  const out = new WritesEncoder();
  for (const write of writes) {
    if (write.kind === "put") out.putBytes(write.key, write.value);
    else out.delete(write.key);
  }
  return out.finish();
}

/** Decodes encoded writes. */
export function decodeWrites(bytes: Uint8Array): WriteView[] {
  const reader = new Reader(bytes);
  const count = reader.u32();
  const writes: WriteView[] = [];
  for (let i = 0; i < count; i++) {
    const kind = reader.u8();
    if (kind === 1) {
      writes.push({ kind: "put", key: reader.str(), value: reader.bytesField() });
    } else if (kind === 0) {
      writes.push({ kind: "delete", key: reader.str() });
    } else {
      throw new DecodeError("bad write kind");
    }
  }
  reader.end();
  return writes;
}

/** Encodes an upcaster's answers. */
export function encodeUpcasts(upcasts: readonly UpcastView[]): Uint8Array {
  const out = new Writer();
  out.u32(0);
  for (const upcast of upcasts) {
    if (upcast.kind === "unchanged") {
      out.u8(0);
      continue;
    }
    out.u8(1);
    out.str(upcast.type);
    out.bytesField(upcast.data);
    if (upcast.metadata === null) {
      out.u8(0);
    } else {
      out.u8(1);
      out.bytesField(upcast.metadata);
    }
  }
  return out.finish(upcasts.length);
}

/** Decodes an upcaster's encoded answers. */
export function decodeUpcasts(bytes: Uint8Array): UpcastView[] {
  const reader = new Reader(bytes);
  const count = reader.u32();
  const upcasts: UpcastView[] = [];
  for (let i = 0; i < count; i++) {
    const kind = reader.u8();
    if (kind === 0) {
      upcasts.push({ kind: "unchanged" });
    } else if (kind === 1) {
      upcasts.push({
        kind: "changed",
        type: reader.str(),
        data: reader.bytesField(),
        metadata: reader.optionalBytes(),
      });
    } else {
      throw new DecodeError("bad upcast kind");
    }
  }
  reader.end();
  return upcasts;
}
