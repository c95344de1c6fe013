/**
 * Write Lantern projections in TypeScript or JavaScript. This first part is the wire encoding the
 * host and a module speak; the projection model (subscription, handle, query, state) builds on it.
 */
export * from "./wire.js";
