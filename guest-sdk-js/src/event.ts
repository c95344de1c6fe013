const utf8 = new TextDecoder();

/**
 * One event of the log, as a projection sees it. `data` and `metadata` are parsed on first use;
 * until then the event holds only where they are in the batch's bytes.
 */
export class Event {
  /** Position in the global log, from 1. */
  readonly position: number;
  /** Revision in its stream, from 0. */
  readonly revision: number;
  /** The stream's name. */
  readonly stream: string;
  /** The event type. */
  readonly type: string;
  /** When the store recorded it, in microseconds since the Unix epoch. */
  readonly recordedAtMicros: number;
  // Where the id, data and metadata are in `bytes` (`metadataStart` -1: no metadata); the parsed
  // values once asked for (`undefined`: not parsed yet).
  private readonly bytes: Uint8Array;
  private readonly idStart: number;
  private readonly dataStart: number;
  private readonly dataEnd: number;
  private readonly metadataStart: number;
  private readonly metadataEnd: number;
  private parsedData: unknown;
  private parsedMetadata: unknown;

  /** Made by the SDK from a batch (`wire.ts`); a projection is handed events, never makes them. */
  constructor(
    position: number,
    revision: number,
    stream: string,
    type: string,
    recordedAtMicros: number,
    bytes: Uint8Array,
    idStart: number,
    dataStart: number,
    dataEnd: number,
    metadataStart: number,
    metadataEnd: number,
  ) {
    this.position = position;
    this.revision = revision;
    this.stream = stream;
    this.type = type;
    this.recordedAtMicros = recordedAtMicros;
    this.bytes = bytes;
    this.idStart = idStart;
    this.dataStart = dataStart;
    this.dataEnd = dataEnd;
    this.metadataStart = metadataStart;
    this.metadataEnd = metadataEnd;
    this.parsedData = undefined;
    this.parsedMetadata = undefined;
  }

  /** The stream's category: the part of its name before the first `-`. */
  get category(): string {
    return categoryOf(this.stream);
  }

  /** The event's id, a UUID in its usual form (`0192f4c5-...`). */
  get id(): string {
    const hex = Array.from(this.bytes.subarray(this.idStart, this.idStart + 16), (b) => b.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  /**
   * When the store recorded it (the leader's clock at its append). Use this, never the clock,
   * which a projection does not have: it must fold the same way on every replay.
   */
  get recordedAt(): Date {
    return new Date(Math.floor(this.recordedAtMicros / 1000));
  }

  /** The data, parsed from JSON. */
  get data(): any {
    if (this.parsedData === undefined) {
      this.parsedData = parseJson(this.bytes.subarray(this.dataStart, this.dataEnd), this, "data");
    }
    return this.parsedData;
  }

  /** The metadata, parsed from JSON; `null` when the event has none. */
  get metadata(): any {
    if (this.parsedMetadata === undefined) {
      this.parsedMetadata =
        this.metadataStart < 0
          ? null
          : parseJson(this.bytes.subarray(this.metadataStart, this.metadataEnd), this, "metadata");
    }
    return this.parsedMetadata;
  }

  /** The data as JSON text, unparsed. */
  get dataText(): string {
    return utf8.decode(this.bytes.subarray(this.dataStart, this.dataEnd));
  }
}

/** The category of a stream: the part of its name before the first `-`. */
export function categoryOf(stream: string): string {
  const dash = stream.indexOf("-");
  return dash < 0 ? stream : stream.slice(0, dash);
}

// JSON text never parses to `undefined`, so `undefined` can mean "not parsed yet" above.
function parseJson(bytes: Uint8Array, event: Event, what: string): unknown {
  try {
    return JSON.parse(utf8.decode(bytes));
  } catch (error) {
    throw new Error(`${event.type} at position ${event.position}: ${what} is not JSON: ${(error as Error).message}`);
  }
}
