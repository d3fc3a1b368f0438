//! The host side of the `sluice:plugin` WIT contract: the one place that generates
//! wasmtime bindings.

wasmtime::component::bindgen!({
    world: "transformer",
    path: "../wit",
    // A plugin cannot make the host panic through a bad resource handle: it traps.
    imports: { default: trappable },
});

pub(crate) use sluice::plugin::{log, state};
