//! Named, durable segments: a directory of names kept as an ordinary segment
//! in map entry 0, updated by compare-and-swap like any other commit.
//!
//! Record format (little-endian), sorted by name:
//! `u16 name length | name (UTF-8) | u32 segment id | u64 entry version |
//! 32-byte BLAKE3 digest | u32 check` (the check is xxh3 of the record before
//! it, so a damaged name or id is detected, and the record skipped, as long
//! as its length is intact). The digest is of the named segment's bytes at
//! bind time, when the entry had the recorded version; open and `hicamp
//! fsck` verify it while the entry still has that version (a named entry
//! written since, through the map or a window, is a change, not damage).

use crate::error::{Error, Result};
use crate::id::SegmentId;
use crate::memory::Memory;
use crate::segment::Segment;

/// The map entry holding the directory.
pub const DIRECTORY: SegmentId = SegmentId(0);
const MAX_NAME: usize = 1024;

/// One binding of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedSegment {
    /// The name.
    pub name: String,
    /// The map entry it names.
    pub id: SegmentId,
    /// The entry's version when it was bound (the digest is of that version).
    pub version: u64,
    /// BLAKE3 of the segment's bytes when it was bound.
    pub digest: [u8; 32],
}

/// Parses directory bytes as far as they are well formed: every record
/// whose check verifies (a damaged record with an intact length is skipped;
/// a damaged length ends the parse), and what was wrong, if anything.
pub(crate) fn parse_prefix(b: &[u8]) -> (Vec<NamedSegment>, Option<String>) {
    let mut out: Vec<NamedSegment> = Vec::new();
    let mut err = None;
    let mut i = 0;
    while i < b.len() {
        let Some(n) = b
            .get(i..i + 2)
            .map(|x| u16::from_le_bytes([x[0], x[1]]) as usize)
        else {
            err = Some("directory: truncated record".to_string());
            break;
        };
        let Some(rec) = b.get(i..i + 2 + n + FIXED) else {
            err = Some("directory: truncated record".to_string());
            break;
        };
        i += 2 + n + FIXED;
        match record(rec, n, out.last()) {
            Ok(ns) => out.push(ns),
            Err(e) => {
                err = Some(match std::str::from_utf8(&rec[2..2 + n]) {
                    Ok(name) => format!("{e} (the damaged name reads {name:?})"),
                    Err(_) => e.to_string(),
                })
            }
        }
    }
    (out, err)
}

/// Bytes of a record besides its length word and name: id, version, digest,
/// check.
const FIXED: usize = 4 + 8 + 32 + 4;

fn record_check(rec: &[u8]) -> u32 {
    xxhash_rust::xxh3::xxh3_64_with_seed(rec, 0xd1_4ec7) as u32
}

/// One record (`rec` is all of it, `n` its name length).
fn record(
    rec: &[u8],
    n: usize,
    prev: Option<&NamedSegment>,
) -> std::result::Result<NamedSegment, &'static str> {
    let body = &rec[..2 + n + FIXED - 4];
    let check = u32::from_le_bytes(rec[2 + n + FIXED - 4..].try_into().expect("4"));
    if check != record_check(body) {
        return Err("directory: a damaged record");
    }
    let name = std::str::from_utf8(&body[2..2 + n])
        .map_err(|_| "directory: name is not UTF-8")?
        .to_string();
    let id = SegmentId(u32::from_le_bytes(
        body[2 + n..2 + n + 4].try_into().expect("4"),
    ));
    let version = u64::from_le_bytes(body[2 + n + 4..2 + n + 12].try_into().expect("8"));
    let digest: [u8; 32] = body[2 + n + 12..].try_into().expect("32");
    if n == 0 || prev.is_some_and(|p| p.name >= name) {
        return Err("directory: names empty or not sorted");
    }
    Ok(NamedSegment {
        name,
        id,
        version,
        digest,
    })
}

/// Rewrites the directory to `list` (a salvaging open dropping the names of
/// lost entries).
pub(crate) fn rewrite(mem: &Memory, list: &[NamedSegment]) -> Result<()> {
    let seg = mem.segment(&encode(list))?;
    match mem.map().entry(DIRECTORY) {
        Ok(e) => mem.map().commit(DIRECTORY, e.version, seg).map(|_| ()),
        Err(_) => {
            let id = mem.map().insert(seg)?;
            debug_assert_eq!(id, DIRECTORY);
            Ok(())
        }
    }
}

/// Parses directory bytes.
pub(crate) fn parse(b: &[u8]) -> std::result::Result<Vec<NamedSegment>, String> {
    match parse_prefix(b) {
        (list, None) => Ok(list),
        (_, Some(e)) => Err(e),
    }
}

fn encode(list: &[NamedSegment]) -> Vec<u8> {
    let mut b = Vec::new();
    for e in list {
        let start = b.len();
        b.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        b.extend_from_slice(e.name.as_bytes());
        b.extend_from_slice(&e.id.0.to_le_bytes());
        b.extend_from_slice(&e.version.to_le_bytes());
        b.extend_from_slice(&e.digest);
        let check = record_check(&b[start..]);
        b.extend_from_slice(&check.to_le_bytes());
    }
    b
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(Error::BadName(name.to_string()));
    }
    Ok(())
}

impl Memory {
    /// Sizes the line reserve kept for unbinding (see [`Memory::unbind`]) by
    /// a directory of `len` bytes: its lines, leaves and interior (an
    /// unbind's new directory is smaller; an empty directory needs none).
    /// An error when a larger reserve is not available (the memory is too
    /// full for a directory that large).
    pub(crate) fn keep_directory_reserve(&self, len: u64) -> Result<()> {
        let ls = self.line_size() as u64;
        let fanout = ls / 4;
        let mut n = len.div_ceil(ls);
        let mut lines = n;
        while n > 1 {
            n = n.div_ceil(fanout);
            lines += n;
        }
        self.inner.store.keep_reserve(lines)
    }

    fn read_directory(&self) -> Result<(Vec<NamedSegment>, u64)> {
        let (seg, version) = self.map().get_versioned(DIRECTORY)?;
        let list = parse(&seg.to_vec()).map_err(|what| Error::Corrupt {
            path: self
                .path()
                .map_or("memory".into(), |p| p.display().to_string()),
            what,
        })?;
        Ok((list, version))
    }

    /// Changes the directory with `f` (returning the displaced id), retrying
    /// on conflict.
    fn update_directory(
        &self,
        mut f: impl FnMut(&mut Vec<NamedSegment>) -> Option<SegmentId>,
    ) -> Result<Option<SegmentId>> {
        loop {
            let (mut list, version) = self.read_directory()?;
            let old_len = encode(&list).len() as u64;
            let displaced = f(&mut list);
            let bytes = encode(&list);
            let seg = self.segment(&bytes)?;
            // A larger directory needs a larger reserve first (so that any
            // of its names can be unbound however full the memory gets).
            self.keep_directory_reserve(bytes.len() as u64)
                .or_else(|e| if seg.len() <= old_len { Ok(()) } else { Err(e) })?;
            match self.map().commit(DIRECTORY, version, seg) {
                Ok(_) => {
                    let _ = self.keep_directory_reserve(bytes.len() as u64);
                    return Ok(displaced);
                }
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Binds `name` to `seg` durably: the segment gets a map entry, then the
    /// directory is committed. A previous binding of the name is replaced
    /// (and its entry deleted). Returns the new entry's id.
    pub fn bind(&self, name: &str, seg: Segment) -> Result<SegmentId> {
        check_name(name)?;
        let digest = seg.digest();
        let id = self.map().insert(seg)?;
        let version = match self.map().entry(id) {
            Ok(e) => e.version,
            Err(e) => {
                let _ = self.map().delete(id);
                return Err(e);
            }
        };
        let entry = NamedSegment {
            name: name.to_string(),
            id,
            version,
            digest,
        };
        let res = self.update_directory(|list| {
            match list.binary_search_by(|e| e.name.as_str().cmp(name)) {
                Ok(i) => Some(std::mem::replace(&mut list[i], entry.clone()).id),
                Err(i) => {
                    list.insert(i, entry.clone());
                    None
                }
            }
        });
        match res {
            Ok(Some(old)) => {
                self.map().delete(old)?;
                Ok(id)
            }
            Ok(None) => Ok(id),
            Err(e) => {
                let _ = self.map().delete(id);
                Err(e)
            }
        }
    }

    /// The entry `name` is bound to.
    pub fn lookup(&self, name: &str) -> Result<Option<SegmentId>> {
        Ok(self
            .read_directory()?
            .0
            .into_iter()
            .find(|e| e.name == name)
            .map(|e| e.id))
    }

    /// A snapshot of the segment bound to `name`.
    pub fn get_named(&self, name: &str) -> Result<Option<Segment>> {
        match self.lookup(name)? {
            Some(id) => Ok(Some(self.map().get(id)?)),
            None => Ok(None),
        }
    }

    /// Removes the binding of `name` and deletes its entry; false if unbound.
    ///
    /// Works in a full memory: the new directory's lines may come from a
    /// reserve of line slots (and file space) that only unbinding uses, kept
    /// at the directory's size in lines; deleting the entry then frees lines.
    pub fn unbind(&self, name: &str) -> Result<bool> {
        let old = crate::store::using_reserve(|| {
            self.update_directory(|list| {
                let i = list.iter().position(|e| e.name == name)?;
                Some(list.remove(i).id)
            })
        })?;
        match old {
            Some(id) => {
                self.map().delete(id)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Every binding, sorted by name.
    pub fn names(&self) -> Result<Vec<NamedSegment>> {
        Ok(self.read_directory()?.0)
    }
}
