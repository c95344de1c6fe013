// The host interface a module imports (wit/lantern.wit, `interface host`), as componentize-js
// binds it: `list<u8>` is a Uint8Array, `option<T>` is T or undefined, `u32` a number.
declare module "lantern:projection/host@0.1.1" {
  export function get(key: string): Uint8Array | undefined;
  export function scan(prefix: string, after: string, limit: number): Array<[string, Uint8Array]>;
  export type Level = "trace" | "debug" | "info" | "warn" | "error";
  export function log(level: Level, message: string): void;
}
