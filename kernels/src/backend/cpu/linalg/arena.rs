//! Weight memory: 2 MiB-aligned regions on transparent huge pages, handed out in upload order.
//!
//! Two reasons, both about decode, which streams every weight byte once per step:
//!
//! - **Huge pages.** With 4 KiB pages a stream takes a TLB miss every 4 KiB, and the hardware
//!   prefetchers stop at every page boundary. On the development VM the packed decode kernel
//!   went from 0.857 to 0.968 of the bandwidth probe with huge pages (criterion `gemv_m1`,
//!   docs/BENCHMARKS.md).
//!   Regions are `madvise(MADV_HUGEPAGE)`d before they are touched, so they get huge pages on
//!   kernels whose THP mode is `madvise` (the common default) as well as `always`.
//! - **Forward order.** A model uploads its matrices in the order the forward pass reads them,
//!   and consecutive slabs are contiguous, so the decode kernel's software prefetch, which runs
//!   a fixed distance ahead of the read position, runs on from the end of one matrix into the
//!   start of the next instead of into unrelated memory. (The criterion bench `gemv_m1`
//!   measures no difference against matrices on huge pages of their own; the arena is kept
//!   for the huge pages and one mapping per model.)
//!
//! A region is only virtual address space until a slab in it is written, so the unused tail of
//! the last region costs at most one huge page.

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use half::{bf16, f16};

/// Alignment (and huge page size) of a region.
const HUGE_PAGE: usize = 2 << 20;

/// Address space reserved per region: a whole model of a few hundred MiB lands in one.
const REGION_BYTES: usize = 1 << 30;

/// Alignment of a slab inside its region: one cache line, so vector loads never split lines
/// at a slab's start.
const SLAB_ALIGN: usize = 64;

/// Element types a slab can hold: plain numbers whose all-zero bit pattern is `0`.
pub trait Element: Copy + Default + Send + Sync + 'static + sealed::Sealed {
    /// Fills `out` from the little-endian bytes of as many elements (as a safetensors file
    /// stores them); panics unless `bytes` holds exactly that many.
    fn from_le(bytes: &[u8], out: &mut [Self]);
    /// The value as an `f32` (exact: every element type here widens without rounding).
    fn to_f32(self) -> f32;
    /// The nearest element to `v` (round to nearest, ties to even; exact for `f32`).
    fn from_f32(v: f32) -> Self;
}

/// [`Element`] for a type with `from_le_bytes`: a plain loop over whole elements, which the
/// compiler turns into vector copies on a little-endian machine.
macro_rules! element {
    ($t:ty, $n:literal, $to:expr, $from:expr) => {
        impl Element for $t {
            #[inline]
            fn to_f32(self) -> f32 {
                $to(self)
            }
            #[inline]
            fn from_f32(v: f32) -> $t {
                $from(v)
            }

            fn from_le(bytes: &[u8], out: &mut [$t]) {
                let (elements, rest) = bytes.as_chunks::<$n>();
                assert!(
                    rest.is_empty() && elements.len() == out.len(),
                    "{} bytes for {} elements of {} bytes",
                    bytes.len(),
                    out.len(),
                    $n
                );
                for (o, e) in out.iter_mut().zip(elements) {
                    *o = <$t>::from_le_bytes(*e);
                }
            }
        }
    };
}
element!(f32, 4, std::convert::identity, std::convert::identity);
element!(f16, 2, f16::to_f32, f16::from_f32);
element!(bf16, 2, bf16::to_f32, bf16::from_f32);

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// One allocation of address space.
struct Region {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the region is plain memory; access to its bytes goes through `Slab`s, which never
// overlap (the arena hands each byte out once).
unsafe impl Send for Region {}
// SAFETY: see `Send`.
unsafe impl Sync for Region {}

impl Region {
    fn new(bytes: usize) -> Region {
        let size = bytes.div_ceil(HUGE_PAGE).max(1) * HUGE_PAGE;
        let layout = Layout::from_size_align(size, HUGE_PAGE).expect("region layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            handle_alloc_error(layout)
        };
        advise_huge_pages(ptr, size);
        Region { ptr, layout }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `Region::new` with this layout, freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(ptr: NonNull<u8>, size: usize) {
    // SAFETY: the range is one live allocation, aligned to a page; MADV_HUGEPAGE only changes
    // how the kernel backs it. A failure (THP disabled, old kernel) leaves ordinary pages.
    let rc = unsafe { libc::madvise(ptr.as_ptr().cast(), size, libc::MADV_HUGEPAGE) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "madvise(MADV_HUGEPAGE) refused; weights stay on ordinary pages"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_ptr: NonNull<u8>, _size: usize) {}

/// Hands out zero-initialised [`Slab`]s, each placed right after the previous one.
pub struct Arena {
    region_bytes: usize,
    tail: Mutex<Option<(Arc<Region>, usize)>>,
}

impl Default for Arena {
    fn default() -> Self {
        Arena::new()
    }
}

impl Arena {
    /// An arena reserving address space in regions of 1 GiB (or the request, if larger).
    pub fn new() -> Arena {
        Arena::with_region_bytes(REGION_BYTES)
    }

    /// An arena whose regions are `bytes` long (or the request, if larger); `0` sizes every
    /// region to its one request.
    pub fn with_region_bytes(bytes: usize) -> Arena {
        Arena {
            region_bytes: bytes,
            tail: Mutex::new(None),
        }
    }

    /// A slab of `len` zeros placed after the previous slab (in a new region if it does not
    /// fit the current one).
    pub fn alloc<T: Element>(&self, len: usize) -> Slab<T> {
        let bytes = len
            .checked_mul(size_of::<T>())
            .expect("slab size overflows usize");
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let fits = |(region, used): &(Arc<Region>, usize)| {
            used.next_multiple_of(SLAB_ALIGN) + bytes <= region.layout.size()
        };
        if !tail.as_ref().is_some_and(fits) {
            *tail = Some((Arc::new(Region::new(bytes.max(self.region_bytes))), 0));
        }
        let (region, used) = tail.as_mut().expect("a region was just made");
        let offset = used.next_multiple_of(SLAB_ALIGN);
        *used = offset + bytes;
        // SAFETY: offset + bytes ≤ the region's size (checked by `fits` or by sizing the new
        // region); no other slab covers these bytes. Zero bits are `0` for every `Element`.
        let ptr = unsafe {
            let ptr = region.ptr.as_ptr().add(offset);
            ptr.write_bytes(0, bytes);
            NonNull::new_unchecked(ptr.cast::<T>())
        };
        Slab {
            _region: Arc::clone(region),
            ptr,
            len,
            _marker: PhantomData,
        }
    }

    /// A slab holding the elements whose little-endian bytes `parts` hold, one after the
    /// other (each part a whole number of elements).
    pub fn from_le<T: Element>(&self, parts: &[&[u8]]) -> Slab<T> {
        let size = size_of::<T>();
        let mut slab = self.alloc(parts.iter().map(|p| p.len() / size).sum());
        let mut at = 0;
        for part in parts {
            let len = part.len() / size;
            T::from_le(part, &mut slab[at..at + len]);
            at += len;
        }
        slab
    }
}

/// `len` elements of `T` in an arena region, kept alive by the slab.
pub struct Slab<T: Element> {
    _region: Arc<Region>,
    ptr: NonNull<T>,
    len: usize,
    _marker: PhantomData<T>,
}

// SAFETY: a slab owns its elements exclusively (the arena hands each byte out once); `T` is a
// plain number.
unsafe impl<T: Element> Send for Slab<T> {}
// SAFETY: see `Send`.
unsafe impl<T: Element> Sync for Slab<T> {}

impl<T: Element> Deref for Slab<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points at `len` initialised elements inside the live region.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Element> DerefMut for Slab<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Element + std::fmt::Debug> std::fmt::Debug for Slab<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slab").field("len", &self.len).finish()
    }
}

/// `len` zeros on transparent huge pages, committed by the kernel as they are first written.
///
/// For memory sized to a budget and filled as it is used: the KV store reserves the whole
/// budget when the engine starts, but a machine serving short sequences touches a small part
/// of it. Huge pages matter there for the same reason as for weights: on 4 KiB pages each
/// block of one KV head (a few KiB) sits on a page of its own, so attention and the KV write
/// take a TLB miss per block, and on a virtual machine a miss walks two page tables.
pub struct ZeroedPages<T: Element> {
    ptr: NonNull<T>,
    len: usize,
    /// Bytes mapped at `ptr` (a whole number of huge pages, at least one).
    mapped: usize,
}

// SAFETY: the buffer owns its elements exclusively; `T` is a plain number.
unsafe impl<T: Element> Send for ZeroedPages<T> {}
// SAFETY: see `Send`.
unsafe impl<T: Element> Sync for ZeroedPages<T> {}

impl<T: Element> ZeroedPages<T> {
    /// Reserves `len` zeros (address space only until written).
    pub fn new(len: usize) -> ZeroedPages<T> {
        let bytes = len
            .checked_mul(size_of::<T>())
            .expect("buffer size overflows usize");
        let mapped = bytes.div_ceil(HUGE_PAGE).max(1) * HUGE_PAGE;
        let ptr = map_zeroed(mapped).cast::<T>();
        ZeroedPages { ptr, len, mapped }
    }
}

impl<T: Element> Drop for ZeroedPages<T> {
    fn drop(&mut self) {
        unmap(self.ptr.cast(), self.mapped);
    }
}

impl<T: Element> Deref for ZeroedPages<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points at `mapped ≥ len · size_of::<T>()` bytes of zero-filled (then
        // written) memory, live until drop; zero bits are `0` for every `Element`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Element> DerefMut for ZeroedPages<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Element> std::fmt::Debug for ZeroedPages<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZeroedPages")
            .field("len", &self.len)
            .finish()
    }
}

/// Maps `size` bytes (a multiple of [`HUGE_PAGE`]) of fresh anonymous memory, aligned to a huge
/// page and advised onto huge pages. Anonymous mappings read as zeros and are committed on
/// first write.
#[cfg(unix)]
fn map_zeroed(size: usize) -> NonNull<u8> {
    let fail = || handle_alloc_error(Layout::from_size_align(size, HUGE_PAGE).expect("layout"));
    // Over-map by one huge page, then unmap the unaligned head and the tail.
    let span = size.checked_add(HUGE_PAGE).unwrap_or_else(fail);
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        fail();
    }
    let head = (raw as usize).next_multiple_of(HUGE_PAGE) - raw as usize;
    let tail = span - head - size;
    // SAFETY: both ranges lie inside the mapping just made and outside the part kept.
    unsafe {
        let raw = raw.cast::<u8>();
        if head > 0 {
            libc::munmap(raw.cast(), head);
        }
        if tail > 0 {
            libc::munmap(raw.add(head + size).cast(), tail);
        }
        let ptr = NonNull::new_unchecked(raw.add(head));
        advise_huge_pages(ptr, size);
        ptr
    }
}

#[cfg(unix)]
fn unmap(ptr: NonNull<u8>, size: usize) {
    // SAFETY: `ptr..ptr + size` is a mapping made by `map_zeroed`, unmapped once.
    unsafe { libc::munmap(ptr.as_ptr().cast(), size) };
}

#[cfg(not(unix))]
fn map_zeroed(size: usize) -> NonNull<u8> {
    let layout = Layout::from_size_align(size, HUGE_PAGE).expect("layout");
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    NonNull::new(ptr).unwrap_or_else(|| handle_alloc_error(layout))
}

#[cfg(not(unix))]
fn unmap(ptr: NonNull<u8>, size: usize) {
    let layout = Layout::from_size_align(size, HUGE_PAGE).expect("layout");
    // SAFETY: allocated by `map_zeroed` with this layout, freed once.
    unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slabs_are_zeroed_contiguous_and_outlive_the_arena() {
        let arena = Arena::with_region_bytes(1 << 22);
        let mut a = arena.alloc::<f32>(100);
        let b = arena.alloc::<f16>(10);
        assert!(a.iter().all(|&v| v == 0.0) && b.iter().all(|v| v.to_f32() == 0.0));
        let a_end = a.as_ptr() as usize + 400;
        assert_eq!(b.as_ptr() as usize, a_end.next_multiple_of(SLAB_ALIGN));
        a[99] = 1.5;
        // Too big for the rest of the region: a region of its own.
        let big = arena.alloc::<f32>(1 << 21);
        assert_eq!(big.as_ptr() as usize % HUGE_PAGE, 0);
        drop(arena);
        assert_eq!((a[99], big.len()), (1.5, 1 << 21));
    }

    #[test]
    fn zeroed_pages_are_zero_aligned_and_writable() {
        for len in [0, 1, 1000, (3 << 20) / 4 + 7] {
            let mut buf = ZeroedPages::<f32>::new(len);
            assert_eq!(buf.len(), len);
            assert_eq!(buf.as_ptr() as usize % HUGE_PAGE, 0);
            assert!(buf.iter().all(|&v| v == 0.0));
            if let Some(last) = buf.last_mut() {
                *last = 2.5;
            }
            assert!(len == 0 || buf[len - 1] == 2.5);
        }
    }
}
