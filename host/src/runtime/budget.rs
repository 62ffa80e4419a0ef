//! Memory the host holds on a plugin call's behalf, and the call's budget for it.
//!
//! `memory_mb` caps the guest's linear memory, but a plugin also makes the host allocate:
//! request bodies written and not yet sent, header fields, the resources themselves. Each
//! is bounded, and together they are counted against a per-call budget:
//!
//! - an outgoing body buffers at most [`OUTGOING_CHUNKS`] + 1 chunks of [`OUTGOING_CHUNK`]
//!   bytes (a write waits until the connection takes them);
//! - a header-fields resource holds at most [`FIELD_LIMIT`] bytes;
//! - the call's resource table holds at most `budget / per-resource bound` entries;
//! - every epoch tick, the host adds up what the call's resources hold; over the budget, the
//!   call stops with a policy error, as it does when the table is full.

use std::any::Any;

use wasmtime::component::ResourceTable;
use wasmtime_wasi_http::FieldMap;
use wasmtime_wasi_http::p2::body::HostOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostOutgoingRequest, HostOutgoingResponse};

use super::policy::Policy;

/// Largest write into an outgoing body, bytes.
pub(crate) const OUTGOING_CHUNK: usize = 64 * 1024;
/// Chunks an outgoing body buffers beyond the one in flight.
pub(crate) const OUTGOING_CHUNKS: usize = 1;
/// Largest header-fields resource, bytes.
pub(crate) const FIELD_LIMIT: usize = 64 * 1024;
/// What one unsent body may hold.
const BODY_HOLD: u64 = ((OUTGOING_CHUNKS + 1) * OUTGOING_CHUNK) as u64;
/// A resource's own bookkeeping, besides what it holds.
const ENTRY: u64 = 64;

/// One call's budget for host-side memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostBudget {
    /// Bytes.
    pub(crate) bytes: u64,
}

impl HostBudget {
    /// The budget for a plugin with `policy`: as much as its linear memory may use (at
    /// least 16 MiB), so a plugin can make the host hold at most about what it may hold itself.
    pub(crate) fn for_policy(policy: &Policy) -> HostBudget {
        HostBudget {
            bytes: policy.memory_bytes.max(16 << 20),
        }
    }

    /// How many resources the call's table may hold: enough that each could be a full body
    /// or a full set of fields within the budget.
    pub(crate) fn resources(self) -> usize {
        let per = BODY_HOLD.max(FIELD_LIMIT as u64);
        usize::try_from(self.bytes / per)
            .unwrap_or(usize::MAX)
            .clamp(256, 16_384)
    }
}

/// What the resources in `table` hold now, in bytes: bodies counted at what they may
/// buffer, fields at their size.
pub(crate) fn held(table: &mut ResourceTable) -> u64 {
    table.iter_mut().map(|entry| ENTRY + holds(entry)).sum()
}

fn holds(entry: &mut (dyn Any + Send)) -> u64 {
    let entry: &dyn Any = entry;
    if let Some(fields) = entry.downcast_ref::<FieldMap>() {
        return fields_size(fields);
    }
    if entry.is::<HostOutgoingBody>() {
        return BODY_HOLD;
    }
    if let Some(request) = entry.downcast_ref::<HostOutgoingRequest>() {
        let body = if request.body.is_some() { BODY_HOLD } else { 0 };
        return fields_size(&request.headers)
            + body
            + request
                .path_with_query
                .as_ref()
                .map_or(0, |p| p.len() as u64)
            + request.authority.as_ref().map_or(0, |a| a.len() as u64);
    }
    if let Some(response) = entry.downcast_ref::<HostOutgoingResponse>() {
        return fields_size(&response.headers)
            + if response.body.is_some() {
                BODY_HOLD
            } else {
                0
            };
    }
    0
}

fn fields_size(fields: &FieldMap) -> u64 {
    fields
        .iter()
        .map(|(name, value)| (name.as_str().len() + value.len() + 32) as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_bound_keeps_worst_case_within_the_budget() {
        let policy = Policy::default();
        let budget = HostBudget::for_policy(&policy);
        let worst = budget.resources() as u64 * BODY_HOLD.max(FIELD_LIMIT as u64);
        assert!(worst <= budget.bytes, "{worst} > {}", budget.bytes);
        let mut table = ResourceTable::new();
        let mut fields = FieldMap::new_mutable(FIELD_LIMIT);
        fields
            .append_raw(
                http::HeaderName::from_static("x-a"),
                http::HeaderValue::from_static("0123456789"),
            )
            .unwrap();
        table.push(fields).unwrap();
        assert_eq!(held(&mut table), ENTRY + 3 + 10 + 32);
    }
}
