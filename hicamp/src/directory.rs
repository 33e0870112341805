//! Named, durable segments: a directory of names kept as an ordinary segment
//! in map entry 0, updated by compare-and-swap like any other commit.
//!
//! Record format (little-endian), sorted by name:
//! `u16 name length | name (UTF-8) | u32 segment id | 32-byte BLAKE3 digest`.
//! The digest is of the named segment's bytes at bind time; `hicamp fsck`
//! verifies it.

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
    /// BLAKE3 of the segment's bytes when it was bound.
    pub digest: [u8; 32],
}

/// Parses directory bytes.
pub(crate) fn parse(b: &[u8]) -> std::result::Result<Vec<NamedSegment>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let n = b
            .get(i..i + 2)
            .map(|x| u16::from_le_bytes([x[0], x[1]]) as usize)
            .ok_or("directory: truncated record")?;
        let rec = b
            .get(i + 2..i + 2 + n + 36)
            .ok_or("directory: truncated record")?;
        let name = std::str::from_utf8(&rec[..n])
            .map_err(|_| "directory: name is not UTF-8")?
            .to_string();
        let id = SegmentId(u32::from_le_bytes(rec[n..n + 4].try_into().expect("4")));
        let digest: [u8; 32] = rec[n + 4..n + 36].try_into().expect("32");
        if n == 0 || out.last().is_some_and(|p: &NamedSegment| p.name >= name) {
            return Err("directory: names empty or not sorted".into());
        }
        out.push(NamedSegment { name, id, digest });
        i += 2 + n + 36;
    }
    Ok(out)
}

fn encode(list: &[NamedSegment]) -> Vec<u8> {
    let mut b = Vec::new();
    for e in list {
        b.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        b.extend_from_slice(e.name.as_bytes());
        b.extend_from_slice(&e.id.0.to_le_bytes());
        b.extend_from_slice(&e.digest);
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
            let displaced = f(&mut list);
            let seg = self.segment(&encode(&list))?;
            match self.map().commit(DIRECTORY, version, seg) {
                Ok(_) => return Ok(displaced),
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
        let entry = NamedSegment {
            name: name.to_string(),
            id,
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
    pub fn unbind(&self, name: &str) -> Result<bool> {
        let old = self.update_directory(|list| {
            let i = list.iter().position(|e| e.name == name)?;
            Some(list.remove(i).id)
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
