import type { EventView } from "./wire.js";

const utf8 = new TextDecoder();

/** One event of the log, as a projection sees it. `data` and `metadata` are parsed on first use. */
export class Event {
  private parsedData: unknown;
  private parsedMetadata: unknown;
  private dataParsed = false;
  private metadataParsed = false;

  constructor(private readonly view: EventView) {}

  /** Position in the global log, from 1. */
  get position(): number {
    return this.view.position;
  }

  /** Revision in its stream, from 0. */
  get revision(): number {
    return this.view.revision;
  }

  /** The stream's name. */
  get stream(): string {
    return this.view.stream;
  }

  /** The stream's category: the part of its name before the first `-`. */
  get category(): string {
    return categoryOf(this.view.stream);
  }

  /** The event type. */
  get type(): string {
    return this.view.type;
  }

  /** The event's id, a UUID in its usual form (`0192f4c5-...`). */
  get id(): string {
    const hex = Array.from(this.view.id, (b) => b.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  /** When the store recorded it, in microseconds since the Unix epoch. */
  get recordedAtMicros(): number {
    return this.view.recordedAtMicros;
  }

  /**
   * When the store recorded it (the leader's clock at its append). Use this, never the clock,
   * which a projection does not have: it must fold the same way on every replay.
   */
  get recordedAt(): Date {
    return new Date(Math.floor(this.view.recordedAtMicros / 1000));
  }

  /** The data, parsed from JSON. */
  get data(): any {
    if (!this.dataParsed) {
      this.parsedData = parseJson(this.view.data, () => `${this.type} at position ${this.position}: data`);
      this.dataParsed = true;
    }
    return this.parsedData;
  }

  /** The metadata, parsed from JSON; `null` when the event has none. */
  get metadata(): any {
    if (!this.metadataParsed) {
      const metadata = this.view.metadata;
      this.parsedMetadata =
        metadata === null
          ? null
          : parseJson(metadata, () => `${this.type} at position ${this.position}: metadata`);
      this.metadataParsed = true;
    }
    return this.parsedMetadata;
  }

  /** The data as JSON text, unparsed. */
  get dataText(): string {
    return utf8.decode(this.view.data);
  }
}

/** The category of a stream: the part of its name before the first `-`. */
export function categoryOf(stream: string): string {
  const dash = stream.indexOf("-");
  return dash < 0 ? stream : stream.slice(0, dash);
}

function parseJson(bytes: Uint8Array, what: () => string): unknown {
  try {
    return JSON.parse(utf8.decode(bytes));
  } catch (error) {
    throw new Error(`${what()} is not JSON: ${(error as Error).message}`);
  }
}
