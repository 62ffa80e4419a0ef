//! The one place the `deploy-agent:plugin` WIT package is bound on the host.
//!
//! The `host` world exports every interface a plugin may offer; a given plugin exports a
//! subset, so the loader asks for each interface separately (`GuestIndices::new`).

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    world: "host",
    path: "../wit",
    imports: { default: async },
    exports: { default: async },
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
    },
});

pub use self::deploy_agent::plugin::types::{
    Artifact, CallContext, Event, EventKind, Finding, ObjectInfo, ObjectPage, PluginError, Release,
    ReleaseState, ReleaseStatus, Retryable, Severity, Staged, Strategy, TrafficStatus,
};
pub use self::exports::deploy_agent::plugin::{
    backup_store, deploy_target, notifier, traffic, validator,
};
