//! The stages of a run, one file each (the journal around them is in `run.rs`).

mod gate;
mod migrate;
mod release;
mod rollout;
mod shift;
mod validate;
mod watch;
