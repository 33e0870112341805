//! Memory configuration.

use crate::error::{Error, Result};

/// Parameters of a [`Memory`](crate::Memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Line size in bytes: a power of two in `16..=4096`. Default 64.
    pub line_size: usize,
    /// How many lines the memory can hold (the all-zero line is free and not
    /// counted). At most `u32::MAX - 1`. The arena is reserved virtually and
    /// only touched pages use RAM, so a generous capacity is cheap.
    pub capacity_lines: u64,
    /// How many entries the segment map can hold.
    pub map_capacity: u32,
    /// How commits reach stable storage (meaningful for file-backed memories).
    pub durability: Durability,
    /// Emulated persistent-memory write latency, spun once per persist barrier
    /// (PASTE's 10 us experiment). 0 for none.
    pub pm_write_latency_ns: u32,
}

/// How a commit is made durable before it returns.
///
/// Lines are always written before the map entry that refers to them; the
/// mode decides what forces them out of the CPU caches and page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// No flushing (DRAM emulation). A killed process loses nothing that was
    /// stored (the page cache keeps it); a power cut may.
    #[default]
    None,
    /// Persistent-memory style: write back each new line and the map entry
    /// with clwb (or clflushopt, or clflush) and order with sfence, as PASTE
    /// does on a DAX file.
    CacheLine,
    /// File durability: msync(MS_SYNC) of the new lines' pages and of the
    /// entry's page.
    Msync,
}

impl Durability {
    pub(crate) fn code(self) -> u32 {
        match self {
            Durability::None => 0,
            Durability::CacheLine => 1,
            Durability::Msync => 2,
        }
    }

    pub(crate) fn from_code(c: u32) -> Option<Durability> {
        Some(match c {
            0 => Durability::None,
            1 => Durability::CacheLine,
            2 => Durability::Msync,
            _ => return None,
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            line_size: 64,
            capacity_lines: 1 << 24,
            map_capacity: 1 << 20,
            durability: Durability::None,
            pm_write_latency_ns: 0,
        }
    }
}

/// Smallest line size (four child ids per interior line).
pub const MIN_LINE_SIZE: usize = 16;
/// Largest line size.
pub const MAX_LINE_SIZE: usize = 4096;

impl Config {
    /// A default config with another line size.
    pub fn with_line_size(line_size: usize) -> Self {
        Config {
            line_size,
            ..Config::default()
        }
    }

    /// Checks that `line_size` is one HICAMP supports: a power of two in
    /// [`MIN_LINE_SIZE`]`..=`[`MAX_LINE_SIZE`]. The one line-size check: [`validate`]
    /// makes it, and so do the tools that take line sizes from their users.
    ///
    /// [`validate`]: Config::validate
    pub fn check_line_size(line_size: usize) -> Result<()> {
        if line_size.is_power_of_two() && (MIN_LINE_SIZE..=MAX_LINE_SIZE).contains(&line_size) {
            Ok(())
        } else {
            Err(Error::BadConfig(format!(
                "line size {line_size} is not a power of two in {MIN_LINE_SIZE}..={MAX_LINE_SIZE}"
            )))
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        Config::check_line_size(self.line_size)?;
        if self.capacity_lines == 0 || self.capacity_lines > u64::from(u32::MAX - 1) {
            return Err(Error::BadConfig(format!(
                "capacity of {} lines is not in 1..={}",
                self.capacity_lines,
                u32::MAX - 1
            )));
        }
        let arena = (self.capacity_lines + 1)
            .checked_mul(self.line_size as u64)
            .filter(|b| *b <= isize::MAX as u64 / 2);
        if arena.is_none() {
            return Err(Error::BadConfig(format!(
                "{} lines of {} bytes do not fit the address space",
                self.capacity_lines, self.line_size
            )));
        }
        if self.map_capacity < 2 || self.map_capacity == u32::MAX {
            return Err(Error::BadConfig(format!(
                "map capacity {} is not in 2..{} (entry 0 is the directory)",
                self.map_capacity,
                u32::MAX
            )));
        }
        Ok(())
    }
}
