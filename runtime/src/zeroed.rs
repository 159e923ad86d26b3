//! Zeroed buffers that cost nothing until they are used.
//!
//! The KV arena and the scratch buffers are allocated once at start-up, for the largest context
//! and batch. Filling them with zeros by hand (`Vec::resize`) writes every page: a 4096-token
//! SmolLM2 arena is 90 MiB, about a quarter of the cold start, and the process then holds all of
//! it. [`zeroed_vec`] asks the allocator for zeroed memory instead (`calloc`): large blocks come
//! straight from the operating system as zero pages, mapped when first written, so a short
//! prompt touches only the blocks it fills. The memory is still reserved at start-up (a size the
//! machine cannot give is still an error then), and taking it later is a page fault, never an
//! allocation.

use std::alloc::{alloc_zeroed, Layout};

/// Types for which all-zero bytes are a valid value (zero).
///
/// # Safety
/// An implementor must have no invalid bit patterns at all-zero bytes and no padding or
/// references: `mem::zeroed::<T>()` is a valid `T`. Not zero-sized.
pub(crate) unsafe trait ZeroBits: Copy {}

// SAFETY: plain integers and IEEE floats: all-zero bytes are 0 / +0.0.
unsafe impl ZeroBits for u8 {}
// SAFETY: as above.
unsafe impl ZeroBits for i8 {}
// SAFETY: as above.
unsafe impl ZeroBits for u16 {}
// SAFETY: as above.
unsafe impl ZeroBits for u32 {}
// SAFETY: as above.
unsafe impl ZeroBits for i32 {}
// SAFETY: as above.
unsafe impl ZeroBits for f32 {}
// SAFETY: `half::f16` is a transparent wrapper of a `u16`; zero bits are +0.0.
unsafe impl ZeroBits for half::f16 {}

/// `len` zeros, or `None` when the memory cannot be had (never an abort).
pub(crate) fn zeroed_vec<T: ZeroBits>(len: usize) -> Option<Vec<T>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let layout = Layout::array::<T>(len).ok()?;
    // SAFETY: `layout` has a non-zero size (`len > 0`, and `ZeroBits` types are not zero-sized).
    let p = unsafe { alloc_zeroed(layout) }.cast::<T>();
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` comes from the global allocator with the layout of `[T; len]` (what `Vec`
    // would use for capacity `len`); its `len` elements are zero bytes, valid `T`s (`ZeroBits`).
    Some(unsafe { Vec::from_raw_parts(p, len, len) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_vectors_hold_zeros_and_grow_like_any_vec() {
        let mut v: Vec<f32> = zeroed_vec(1000).unwrap();
        assert!(v.len() == 1000 && v.iter().all(|&x| x == 0.0));
        v[999] = 1.0;
        v.push(2.0); // reallocates through the same allocator
        assert_eq!((v[999], v[1000]), (1.0, 2.0));
        let h: Vec<half::f16> = zeroed_vec(3).unwrap();
        assert!(h.iter().all(|x| x.to_f32() == 0.0));
        assert!(zeroed_vec::<u8>(0).unwrap().is_empty());
        assert!(
            zeroed_vec::<u32>(usize::MAX).is_none(),
            "too large: None, not an abort"
        );
    }
}
