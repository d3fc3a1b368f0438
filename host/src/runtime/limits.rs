//! What one plugin instance may take: one memory budget for all of its linear memories
//! and tables, and the time of one call.
//!
//! A component may hold several core instances, each with memories and tables of its
//! own, and multi-memory lets one core module declare many. The budget is the sum of
//! all of them: 32 memories under a 16 MiB limit share 16 MiB. Tables count 8 bytes per
//! element (what wasmtime stores per `funcref` or `externref` slot on a 64-bit host,
//! rounded up).

use std::time::Duration;

use wasmtime::ResourceLimiter;

/// Limits applied to every plugin instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// What all of an instance's linear memories and tables may take together.
    pub(crate) max_memory_bytes: usize,
    /// Wall-clock time one `process` call may take before it is interrupted.
    pub(crate) call_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_memory_bytes: 256 << 20,
            call_timeout: Duration::from_secs(10),
        }
    }
}

/// What one table element counts against the budget.
const TABLE_ELEMENT_BYTES: usize = 8;

/// Core instances per component instance: components made by language toolchains
/// have a handful (the module, shims, adapters).
const MAX_INSTANCES: usize = 64;
/// Linear memories per component instance: one per core module that has one.
const MAX_MEMORIES: usize = 64;
/// Tables per component instance.
const MAX_TABLES: usize = 256;
/// Elements of one table: a JavaScript or Python runtime has tens of thousands.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// The memory budget of one store, remembering a refused growth so that the trap it
/// leads to (a guest allocator aborts) is reported as the memory limit it is.
pub(crate) struct MemoryLimit {
    max_bytes: usize,
    /// Bytes of linear memory and of tables granted so far.
    used: usize,
    /// The total the last refused growth asked for, in this call.
    pub(crate) refused: Option<usize>,
}

impl MemoryLimit {
    pub(crate) fn new(max_bytes: usize) -> Self {
        MemoryLimit {
            max_bytes,
            used: 0,
            refused: None,
        }
    }

    /// Grants growing one memory or table from `current` to `desired` bytes if the
    /// store's total stays within the budget.
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let total = (self.used - current.min(self.used)).saturating_add(desired);
        if total > self.max_bytes {
            self.refused = Some(total);
            return false;
        }
        self.used = total;
        true
    }
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let bytes = |elements: usize| elements.saturating_mul(TABLE_ELEMENT_BYTES);
        if desired > MAX_TABLE_ELEMENTS {
            self.refused =
                Some((self.used - bytes(current).min(self.used)).saturating_add(bytes(desired)));
            return Ok(false);
        }
        Ok(self.grow(bytes(current), bytes(desired)))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memories_and_tables_share_one_budget() {
        let mut limit = MemoryLimit::new(16 << 20);
        assert!(limit.memory_growing(0, 8 << 20, None).unwrap());
        assert!(limit.memory_growing(0, 6 << 20, None).unwrap());
        // 8 + 6 MiB of memories and 256 Ki elements of 8 bytes: 2 MiB, exactly the rest.
        assert!(limit.table_growing(0, 256 << 10, None).unwrap());
        assert!(
            !limit
                .table_growing(256 << 10, (256 << 10) + 1, None)
                .unwrap()
        );
        assert!(
            !limit
                .memory_growing(6 << 20, (6 << 20) + 65536, None)
                .unwrap()
        );
        assert_eq!(limit.refused, Some((16 << 20) + 65536));
    }

    #[test]
    fn a_table_beyond_the_element_cap_is_refused_whatever_the_budget() {
        let mut limit = MemoryLimit::new(4096 << 20);
        assert!(!limit.table_growing(0, 64 << 20, None).unwrap());
        assert_eq!(limit.refused, Some(512 << 20));
    }
}
