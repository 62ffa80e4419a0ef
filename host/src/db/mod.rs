//! The migration and backup core: built in, not a plugin.
//!
//! PostgreSQL first, SQLite as the embedded default. Migrations are sqlx-compatible
//! ([`migrate`]); the schema is snapshotted and fingerprinted ([`schema`]).

pub mod backup;
pub(crate) mod conn;
mod error;
pub mod migrate;
pub mod schema;
pub mod swap;

pub use conn::{Backend, backend_of, redact_url};
pub use error::DbError;
