//! The C ABI of Ember (`libember`, header `include/ember.h`).
//!
//! Skeleton: the exported API (opaque runtime handle, request submission, caller-driven and
//! background engine modes, event pulling) is built on the batching engine in a later step.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

/// Version of the runtime, as "MAJOR.MINOR.PATCH".
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_is_semver() {
        assert_eq!(super::version().split('.').count(), 3);
    }
}
