//! Host bindings generated from `wit/lantern.wit`; nothing else lives here.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "projection",
});
