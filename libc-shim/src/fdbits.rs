//! A set of descriptor numbers for the hooks' fast checks (is this a stack socket, a local
//! connection, an epoll instance of ours...): one bit per descriptor below [`MAX_FD`], read
//! and written with relaxed atomics, so a check costs one load. Larger descriptors are never
//! members (the hooks pass them through).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use libc::c_int;

/// Descriptors a set covers.
pub const MAX_FD: usize = 1 << 16;

/// One bit per descriptor number below [`MAX_FD`].
pub struct FdBits([AtomicU64; MAX_FD / 64]);

impl FdBits {
    /// The empty set (a `static` initializer).
    pub const fn new() -> FdBits {
        FdBits([const { AtomicU64::new(0) }; MAX_FD / 64])
    }

    /// The word and bit of `fd`, if the set covers it.
    #[inline]
    fn at(fd: c_int) -> Option<(usize, u64)> {
        let i = fd as u32 as usize;
        (i < MAX_FD).then_some((i >> 6, 1u64 << (i & 63)))
    }

    /// True when `fd` is in the set.
    #[inline]
    pub fn get(&self, fd: c_int) -> bool {
        Self::at(fd).is_some_and(|(w, m)| self.0[w].load(Relaxed) & m != 0)
    }

    /// Adds (`on`) or removes `fd`; a descriptor the set does not cover is ignored.
    #[inline]
    pub fn set(&self, fd: c_int, on: bool) {
        if let Some((w, m)) = Self::at(fd) {
            if on {
                self.0[w].fetch_or(m, Relaxed);
            } else {
                self.0[w].fetch_and(!m, Relaxed);
            }
        }
    }

    /// Removes `fd`; true when it was in the set.
    #[inline]
    pub fn take(&self, fd: c_int) -> bool {
        Self::at(fd).is_some_and(|(w, m)| self.0[w].fetch_and(!m, Relaxed) & m != 0)
    }

    /// Empties the set, calling `f` with each member it held, in ascending order. Atomics
    /// only, no allocation: fit for a fork handler.
    pub fn drain(&self, mut f: impl FnMut(c_int)) {
        for (w, word) in self.0.iter().enumerate() {
            let mut bits = word.swap(0, Relaxed);
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                f((w * 64 + b) as c_int);
            }
        }
    }

    /// The members, in ascending order (a snapshot of each word as it is reached).
    pub fn members(&self) -> impl Iterator<Item = c_int> + '_ {
        self.0.iter().enumerate().flat_map(|(w, word)| {
            let mut bits = word.load(Relaxed);
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    (w * 64 + b) as c_int
                })
            })
        })
    }
}

impl std::fmt::Debug for FdBits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.members()).finish()
    }
}

impl Default for FdBits {
    fn default() -> FdBits {
        FdBits::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_follow_set_and_take() {
        let s = FdBits::new();
        for fd in [0, 63, 64, 4095, (MAX_FD - 1) as c_int] {
            assert!(!s.get(fd));
            s.set(fd, true);
            assert!(s.get(fd));
        }
        // Out of range: never a member, and no panic.
        s.set(-1, true);
        s.set(MAX_FD as c_int, true);
        assert!(!s.get(-1) && !s.get(MAX_FD as c_int));
        assert_eq!(
            s.members().collect::<Vec<_>>(),
            vec![0, 63, 64, 4095, (MAX_FD - 1) as c_int]
        );
        assert!(s.take(64) && !s.take(64) && !s.get(64));
        s.set(63, false);
        assert_eq!(
            s.members().collect::<Vec<_>>(),
            vec![0, 4095, (MAX_FD - 1) as c_int]
        );
        let mut drained = Vec::new();
        s.drain(|fd| drained.push(fd));
        assert_eq!(drained, vec![0, 4095, (MAX_FD - 1) as c_int]);
        assert_eq!(s.members().count(), 0);
    }
}
