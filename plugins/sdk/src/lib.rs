//! The guest SDK for deploy-agent plugins.
//!
//! A plugin is a Rust crate built for `wasm32-wasip2`. It implements one trait per kind it
//! offers ([`Notifier`], [`Validator`], [`DeployTarget`], [`BackupStore`]) and names them in
//! [`export!`]. The SDK carries the WIT bindings, so a plugin crate has no binding boilerplate.
//!
//! A notifier that posts each deployment event to a webhook:
//!
//! ```no_run
//! use deploy_agent_sdk::prelude::*;
//!
//! struct Webhook;
//!
//! impl Notifier for Webhook {
//!     fn notify(ctx: &Context, event: Event) -> Result<(), PluginError> {
//!         let url: String = ctx.setting("url")?;
//!         let body = serde_json::json!({ "text": event.summary, "environment": event.environment });
//!         http::post(&url).json(&body)?.send()?.error_for_status()?;
//!         Ok(())
//!     }
//! }
//!
//! export!(Webhook: notifier);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component to pin in agent.toml.
//!
//! Everything a plugin reaches goes through the host's sandbox: HTTP only to the hosts
//! agent.toml grants, secrets only by reference ([`Context::secret`]), files only under a
//! granted directory, no environment variables.
#![deny(missing_docs)]

mod context;
pub mod digest;
mod error;
pub mod fs;
pub mod http;
pub mod io;
pub mod log;
mod traits;

/// The bindings generated from the `deploy-agent:plugin` WIT package (imports and shared types).
///
/// Plugins rarely need these directly; the traits and helpers wrap them.
#[allow(missing_docs, clippy::all, unsafe_op_in_unsafe_fn)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        inline: "package deploy-agent:sdk; world sdk { include deploy-agent:plugin/imports@0.1.1; import deploy-agent:plugin/types@0.1.1; import wasi:io/streams@0.2.12; import wasi:filesystem/preopens@0.2.12; }",
        world: "deploy-agent:sdk/sdk",
        generate_all,
    });
}

pub use bindings::deploy_agent::plugin::types::{
    Artifact, CallContext, Event, EventKind, Finding, ObjectInfo, ObjectPage, PluginError, Release,
    ReleaseState, ReleaseStatus, Retryable, Severity, Staged, Strategy, TrafficStatus,
};
pub use bindings::wasi::io::streams::{InputStream, OutputStream, StreamError};
pub use context::{Context, SecretRef, WebhookScheme};
pub use error::{finding, invalid_config, rejected, retryable, unauthorized};
pub use traits::{BackupStore, DeployTarget, Notifier, Traffic, Validator, previous_release};

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// What most plugins need: the traits, the types, the helpers and [`export!`].
pub mod prelude {
    pub use crate::fs;
    pub use crate::http;
    pub use crate::log;
    pub use crate::{
        Artifact, BackupStore, Context, DeployTarget, Event, EventKind, Finding, Notifier,
        ObjectInfo, ObjectPage, PluginError, Release, ReleaseState, ReleaseStatus, SecretRef,
        Severity, Staged, Strategy, Traffic, TrafficStatus, Validator, WebhookScheme, export,
        previous_release,
    };
    pub use crate::{finding, invalid_config, rejected, retryable, unauthorized};
}

include!(concat!(env!("OUT_DIR"), "/bindgen_macro.rs"));

/// Exports a type as a plugin of one or more kinds.
///
/// `export!(MyPlugin: notifier)`, or several kinds at once:
/// `export!(Vercel: deploy_target, validator)`. The kinds are `notifier`, `validator`,
/// `deploy_target`, `backup_store` and `traffic`; `MyPlugin` must implement the matching
/// traits.
///
/// The generated glue also compiles natively, so `cargo clippy` and `cargo test` check a
/// plugin crate on the host (native calls to host imports such as HTTP are unavailable there;
/// test pure logic natively and the plugin itself under the agent).
#[macro_export]
macro_rules! export {
    ($ty:ident : $($kind:ident),+ $(,)?) => {
        #[doc(hidden)]
        #[allow(missing_docs, unsafe_op_in_unsafe_fn, clippy::all)]
        mod __deploy_agent_export {
            type __Plugin = super::$ty;
            $crate::__bindgen!($($kind),+);
            $( $crate::__glue!($kind); )+
            export!(__Plugin with_types_in self);
        }
    };
}

/// Implements one generated export trait by forwarding to the SDK trait (internal).
#[doc(hidden)]
#[macro_export]
macro_rules! __glue {
    (notifier) => {
        impl self::exports::deploy_agent::plugin::notifier::Guest for __Plugin {
            fn notify(
                ctx: $crate::CallContext,
                event: $crate::Event,
            ) -> Result<(), $crate::PluginError> {
                <__Plugin as $crate::Notifier>::notify(&$crate::Context::from_call(ctx)?, event)
            }
        }
    };
    (validator) => {
        impl self::exports::deploy_agent::plugin::validator::Guest for __Plugin {
            fn validate(
                ctx: $crate::CallContext,
                release: $crate::Artifact,
            ) -> Result<Vec<$crate::Finding>, $crate::PluginError> {
                <__Plugin as $crate::Validator>::validate(
                    &$crate::Context::from_call(ctx)?,
                    release,
                )
            }
        }
    };
    (deploy_target) => {
        impl self::exports::deploy_agent::plugin::deploy_target::Guest for __Plugin {
            fn deploy(
                ctx: $crate::CallContext,
                release: $crate::Artifact,
            ) -> Result<$crate::Staged, $crate::PluginError> {
                <__Plugin as $crate::DeployTarget>::deploy(
                    &$crate::Context::from_call(ctx)?,
                    release,
                )
            }
            fn status(
                ctx: $crate::CallContext,
                release_id: String,
            ) -> Result<$crate::ReleaseStatus, $crate::PluginError> {
                <__Plugin as $crate::DeployTarget>::status(
                    &$crate::Context::from_call(ctx)?,
                    &release_id,
                )
            }
            fn promote(
                ctx: $crate::CallContext,
                release_id: String,
            ) -> Result<(), $crate::PluginError> {
                <__Plugin as $crate::DeployTarget>::promote(
                    &$crate::Context::from_call(ctx)?,
                    &release_id,
                )
            }
            fn rollback(
                ctx: $crate::CallContext,
                to: Option<String>,
            ) -> Result<String, $crate::PluginError> {
                <__Plugin as $crate::DeployTarget>::rollback(
                    &$crate::Context::from_call(ctx)?,
                    to.as_deref(),
                )
            }
            fn list_releases(
                ctx: $crate::CallContext,
            ) -> Result<Vec<$crate::Release>, $crate::PluginError> {
                <__Plugin as $crate::DeployTarget>::list_releases(&$crate::Context::from_call(ctx)?)
            }
        }
    };
    (traffic) => {
        impl self::exports::deploy_agent::plugin::traffic::Guest for __Plugin {
            fn strategies(
                ctx: $crate::CallContext,
            ) -> Result<Vec<$crate::Strategy>, $crate::PluginError> {
                <__Plugin as $crate::Traffic>::strategies(&$crate::Context::from_call(ctx)?)
            }
            fn set_weight(
                ctx: $crate::CallContext,
                release_id: String,
                weight: u8,
            ) -> Result<(), $crate::PluginError> {
                <__Plugin as $crate::Traffic>::set_weight(
                    &$crate::Context::from_call(ctx)?,
                    &release_id,
                    weight,
                )
            }
            fn weight(
                ctx: $crate::CallContext,
                release_id: String,
            ) -> Result<$crate::TrafficStatus, $crate::PluginError> {
                <__Plugin as $crate::Traffic>::weight(
                    &$crate::Context::from_call(ctx)?,
                    &release_id,
                )
            }
            fn abort(
                ctx: $crate::CallContext,
                release_id: String,
            ) -> Result<(), $crate::PluginError> {
                <__Plugin as $crate::Traffic>::abort(&$crate::Context::from_call(ctx)?, &release_id)
            }
            fn retire(
                ctx: $crate::CallContext,
                release_id: String,
            ) -> Result<(), $crate::PluginError> {
                <__Plugin as $crate::Traffic>::retire(
                    &$crate::Context::from_call(ctx)?,
                    &release_id,
                )
            }
        }
    };
    (backup_store) => {
        impl self::exports::deploy_agent::plugin::backup_store::Guest for __Plugin {
            fn put(
                ctx: $crate::CallContext,
                key: String,
                metadata: Vec<(String, String)>,
                size_hint: Option<u64>,
                body: &$crate::InputStream,
            ) -> Result<$crate::ObjectInfo, $crate::PluginError> {
                <__Plugin as $crate::BackupStore>::put(
                    &$crate::Context::from_call(ctx)?,
                    &key,
                    metadata,
                    size_hint,
                    body,
                )
            }
            fn get(
                ctx: $crate::CallContext,
                key: String,
                sink: &$crate::OutputStream,
            ) -> Result<$crate::ObjectInfo, $crate::PluginError> {
                <__Plugin as $crate::BackupStore>::get(
                    &$crate::Context::from_call(ctx)?,
                    &key,
                    sink,
                )
            }
            fn list_objects(
                ctx: $crate::CallContext,
                prefix: String,
                page: Option<String>,
            ) -> Result<$crate::ObjectPage, $crate::PluginError> {
                <__Plugin as $crate::BackupStore>::list(
                    &$crate::Context::from_call(ctx)?,
                    &prefix,
                    page.as_deref(),
                )
            }
            fn delete(ctx: $crate::CallContext, key: String) -> Result<(), $crate::PluginError> {
                <__Plugin as $crate::BackupStore>::delete(&$crate::Context::from_call(ctx)?, &key)
            }
        }
    };
}
