//! Host bindings generated from `wit/lantern.wit`; nothing else lives here.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "projection",
    // A host function may fail (a read model that cannot be read): it traps the guest with an
    // error the caller can tell from the guest's own faults.
    imports: { default: trappable },
});

/// The upcaster world: no imports of Lantern's own.
pub mod upcaster {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "upcaster",
    });
}
