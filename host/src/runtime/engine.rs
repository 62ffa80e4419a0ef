//! The one `wasmtime::Engine` of the process: Cranelift, the pooling allocator, epoch
//! interruption driven by a ticker thread, and a bounded wasm stack.

use std::sync::Weak;
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::policy::MAX_MEMORY_MIB;

/// How often the epoch advances; the granularity of CPU-time deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Instances alive at once, across all plugins.
const MAX_INSTANCES: u32 = 64;

/// Bytes of each freed linear memory reset in place rather than returned to the kernel.
const KEEP_RESIDENT: usize = 4 << 20;

/// Builds the engine.
pub(crate) fn new_engine() -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(MAX_INSTANCES)
        .total_core_instances(MAX_INSTANCES * 8)
        .total_memories(MAX_INSTANCES * 2)
        .total_tables(MAX_INSTANCES * 4)
        .total_stacks(MAX_INSTANCES)
        .max_memories_per_component(4)
        .max_memory_size((MAX_MEMORY_MIB << 20) as usize)
        // Reset a freed instance's dirty pages with memset instead of madvise: no page faults
        // on the next instantiation and no TLB-shootdown IPIs (measured: they dominated a
        // fresh-instance call). PAGEMAP_SCAN (Linux 6.7+) finds the dirty pages; elsewhere
        // this falls back to resetting the low `keep_resident` bytes.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(64 << 10)
        .async_stack_keep_resident(256 << 10)
        .decommit_batch_size(MAX_INSTANCES as usize / 4);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .max_wasm_stack(1 << 20)
        .async_stack_size(4 << 20)
        .memory_reservation(MAX_MEMORY_MIB << 20)
        .memory_guard_size(64 << 20)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
pub(crate) fn start_ticker(engine: Weak<Engine>) {
    let spawned = std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the epoch ticker; plugin CPU deadlines will not fire");
    }
}
