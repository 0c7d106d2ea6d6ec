//! Argon2's working memory, kept between the operations of a burst.
//!
//! Each PIN check fills `argon2_memory_kib` of memory (19 MiB by default).
//! Allocated afresh every time, those pages are faulted in and zeroed by
//! the kernel on every operation, which on the benchmark machine cost
//! 11-21 ms per signature, more than half of Argon2's own time. The store
//! keeps the buffers of finished operations (at most [`MAX_KEPT`]) and
//! hands them to the next ones; [`ArgonMemory::release`] drops them all,
//! and the daemon calls it (through `KeyStore::release_memory`) once its
//! work queue has been idle for a moment, so an idle daemon holds none.
//!
//! A kept buffer holds Argon2's blocks of the last PIN check until the
//! next check overwrites them or the release frees it: memory of the
//! daemon's own process, as the decrypted key is during an operation.

use std::sync::Mutex;

use argon2::Block;

/// Buffers kept at most: one per key-store worker on a machine of up to
/// this many CPUs; more concurrent operations allocate their own.
pub const MAX_KEPT: usize = 8;

/// Argon2 block buffers of finished operations, ready for the next.
#[derive(Default)]
pub struct ArgonMemory {
    free: Mutex<Vec<Vec<Block>>>,
}

impl std::fmt::Debug for ArgonMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArgonMemory")
            .field("kept", &self.kept())
            .finish()
    }
}

impl ArgonMemory {
    /// Runs `work` with a buffer of exactly `blocks` blocks: a kept one
    /// when there is one of that size, a new one otherwise; the buffer is
    /// kept afterwards while fewer than [`MAX_KEPT`] are.
    pub fn with<T>(&self, blocks: usize, work: impl FnOnce(&mut [Block]) -> T) -> T {
        let mut buffer = self.take(blocks);
        let result = work(&mut buffer);
        if let Ok(mut free) = self.free.lock()
            && free.len() < MAX_KEPT
        {
            free.push(buffer);
        }
        result
    }

    fn take(&self, blocks: usize) -> Vec<Block> {
        if let Ok(mut free) = self.free.lock() {
            // Buffers of another size (key files written under other
            // settings) are dropped rather than kept.
            while let Some(buffer) = free.pop() {
                if buffer.len() == blocks {
                    return buffer;
                }
            }
        }
        vec![Block::default(); blocks]
    }

    /// Frees every kept buffer.
    pub fn release(&self) {
        if let Ok(mut free) = self.free.lock() {
            *free = Vec::new();
        }
    }

    /// Buffers kept now.
    pub fn kept(&self) -> usize {
        self.free.lock().map_or(0, |free| free.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_kept_and_handed_to_the_next_operation() {
        let memory = ArgonMemory::default();
        let first = memory.with(16, |blocks| blocks.as_ptr() as usize);
        assert_eq!(memory.kept(), 1);
        let second = memory.with(16, |blocks| blocks.as_ptr() as usize);
        assert_eq!(first, second, "the kept buffer was not reused");
        memory.release();
        assert_eq!(memory.kept(), 0);
    }

    #[test]
    fn buffers_of_another_size_are_dropped_and_at_most_max_kept_stay() {
        let memory = ArgonMemory::default();
        memory.with(16, |blocks| assert_eq!(blocks.len(), 16));
        memory.with(32, |blocks| assert_eq!(blocks.len(), 32));
        assert_eq!(memory.kept(), 1, "the 16-block buffer should be gone");
        // Operations running at once each get a buffer; only MAX_KEPT stay.
        fn nest(memory: &ArgonMemory, depth: usize) {
            if depth > 0 {
                memory.with(32, |_| nest(memory, depth - 1));
            }
        }
        nest(&memory, MAX_KEPT + 3);
        assert_eq!(memory.kept(), MAX_KEPT);
    }
}
