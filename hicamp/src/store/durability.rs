//! Durability: the persist barrier that makes new lines durable (per the
//! memory's [`Durability`] mode) before a root that refers to them is
//! published, and the emulated persistent-memory write latency.

use super::Store;
use crate::config::Durability;
use crate::error::Result;
use crate::region::store_fence;

impl Store {
    /// Writes the count extras (the overflow table: see `counts`) to a
    /// memory file's extras section, for a clean close: every handle is
    /// gone, so nothing moves a count meanwhile. A no-op for other memories.
    pub(crate) fn save_extras(&self) -> Result<()> {
        crate::persist::write_extras(self.arena.backing(), &self.layout, &self.overflow.pairs())
    }

    /// Makes every line created so far durable (per the durability mode) before
    /// the caller publishes a root that refers to them.
    pub(crate) fn persist_barrier(&self) -> std::io::Result<()> {
        if self.durability == Durability::None {
            return Ok(());
        }
        let _g = self.flush_lock.lock();
        let mut ids = Vec::new();
        for cell in self.shards.iter() {
            ids.append(&mut cell.lock.lock().pending);
        }
        let backing = self.arena.backing();
        match self.durability {
            Durability::None => {}
            Durability::CacheLine => {
                for &id in &ids {
                    backing.flush_cache_lines(self.arena.offset_of(id), self.line_size());
                }
                store_fence();
            }
            Durability::Msync => {
                let mut pages: Vec<usize> = ids
                    .iter()
                    .map(|&id| self.arena.offset_of(id) / 4096)
                    .collect();
                pages.sort_unstable();
                pages.dedup();
                let mut i = 0;
                while i < pages.len() {
                    let mut j = i + 1;
                    while j < pages.len() && pages[j] == pages[j - 1] + 1 {
                        j += 1;
                    }
                    // Lines never straddle pages (both are aligned, lines are
                    // at most a page), so whole page runs cover them.
                    backing.msync(pages[i] * 4096, (pages[j - 1] + 1 - pages[i]) * 4096)?;
                    i = j;
                }
            }
        }
        self.pm_delay();
        Ok(())
    }

    /// Spins for the emulated persistent-memory write latency.
    pub(crate) fn pm_delay(&self) {
        if self.pm_latency_ns > 0 {
            let t = std::time::Instant::now();
            let d = std::time::Duration::from_nanos(u64::from(self.pm_latency_ns));
            while t.elapsed() < d {
                std::hint::spin_loop();
            }
        }
    }
}
