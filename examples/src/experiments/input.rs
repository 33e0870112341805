//! What `hicamp dedup` reads: files and directories walked in a fixed order (operands
//! followed, links below them and other file systems only when asked), stdin, tar streams, or
//! the built-in workload; each item becomes one segment.

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::dedup::DedupError;
use crate::workload::{self, WorkloadConfig};

/// Most bytes read from one file whose size is not known (a regular file that reports size 0,
/// as the pseudo-files of `/proc` and `/sys` do): it is read to its end, up to this.
pub const UNSIZED_FILE_CAP: u64 = 64 << 10;

/// Most bytes read from all files of unknown size together, so that the memories' sizing
/// (done before reading) stays bounded on any input.
pub const UNSIZED_TOTAL_CAP: u64 = 16 << 20;

/// How directories are walked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkOptions {
    /// Follow symbolic links met inside directories (`du -L`). Operands are always followed
    /// (`du -H`); by default links below them are not (`du -P`), so that `/proc/self/root`
    /// does not lead to `/`.
    pub follow_links: bool,
    /// Enter directories on other file systems than their operand's (by default they are
    /// left out and counted, as `du -x` does).
    pub cross_file_systems: bool,
}

// ---------------------------------------------------------------------------------------------
// Inputs

/// One item to ingest: one segment.
#[derive(Debug, Clone)]
pub enum Item {
    /// A regular file, read when ingested; `len` is its size when it was found (at most that
    /// many bytes are read, so a growing file cannot overrun the memories' sizing).
    File {
        /// The path.
        path: PathBuf,
        /// Size when found; for a file of unknown size, the most that will be read of it.
        len: u64,
        /// The file reported size 0 (a `/proc` or `/sys` pseudo-file, or an empty file): it
        /// is read to its end, up to `len`.
        unsized_: bool,
    },
    /// Bytes already in memory (a workload item).
    Bytes {
        /// A name for messages.
        name: String,
        /// The bytes.
        data: Arc<Vec<u8>>,
    },
    /// Standard input (the operand `-`), read to its end as one item.
    Stdin,
    /// A tar stream: a file, or standard input when `path` is `None`. Each regular member is
    /// one item; other members (directories, links, devices) are left out.
    Tar {
        /// The archive, or `None` for standard input.
        path: Option<PathBuf>,
        /// Size of the archive when known (for the progress bar), else 0.
        len: u64,
    },
}

impl Item {
    /// Size in bytes (as found, for files).
    pub fn len(&self) -> u64 {
        match self {
            Item::File { len, .. } | Item::Tar { len, .. } => *len,
            Item::Bytes { data, .. } => data.len() as u64,
            Item::Stdin => 0,
        }
    }

    /// True for a stream whose size is not known before it is read (stdin, a tar stream).
    pub fn is_stream(&self) -> bool {
        matches!(self, Item::Stdin | Item::Tar { .. })
    }

    /// True when the item holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where the items came from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Files and directories named on the command line.
    Paths(Vec<PathBuf>),
    /// The built-in workload, with a description.
    Workload(String),
}

/// The items to ingest, in a deterministic order, and what was left out while finding them.
#[derive(Debug, Clone)]
pub struct InputSet {
    /// Where they came from.
    pub source: Source,
    /// The items, in ingestion order.
    pub items: Vec<Item>,
    /// Paths that could not be examined or were not regular files or directories.
    pub skipped: u64,
    /// Paths naming a file or directory already found (ingested once).
    pub duplicates: u64,
    /// Symbolic links below the operands that were not followed.
    pub links_not_followed: u64,
    /// Directories on another file system than their operand's, not entered.
    pub other_file_systems: u64,
    /// The first [`MAX_NAMED`] paths that could not be read.
    pub unreadable: Vec<String>,
}

/// Most unreadable paths named in the report (all are counted).
pub const MAX_NAMED: usize = 20;

/// Adds `name` to a bounded list of names.
pub fn name_unreadable(list: &mut Vec<String>, name: String) {
    if list.len() < MAX_NAMED {
        list.push(name);
    }
}

impl InputSet {
    /// The built-in workload ([`workload::default_workload`] with its default configuration).
    pub fn default_workload() -> InputSet {
        let cfg = WorkloadConfig::default();
        let items = workload::default_workload(&cfg);
        let description = format!(
            "built-in default workload (PASTE-style traffic, seed {:#x}): {} RPC requests and \
             {} WAL posts over {} connections each, {} static-object fetches, 2 netmap buffer \
             snapshots",
            cfg.seed, cfg.rpc_requests, cfg.wal_posts, cfg.connections, cfg.static_fetches
        );
        InputSet::from_workload(items, description)
    }

    /// Workload items, each one segment.
    pub fn from_workload(items: Vec<workload::Item>, description: String) -> InputSet {
        InputSet {
            source: Source::Workload(description),
            items: items
                .into_iter()
                .map(|i| Item::Bytes {
                    name: i.name,
                    data: Arc::new(i.data),
                })
                .collect(),
            skipped: 0,
            duplicates: 0,
            links_not_followed: 0,
            other_file_systems: 0,
            unreadable: Vec::new(),
        }
    }

    /// The regular files named by `paths`, directories walked recursively (entries in byte
    /// order of their names), as `walk` says: operands are followed if they are symbolic
    /// links, links below them only with [`WalkOptions::follow_links`], and directories on
    /// other file systems are entered only with [`WalkOptions::cross_file_systems`]. A
    /// directory or file already found (a link loop, a hard link, a repeated operand) is
    /// ingested once. An operand that cannot be examined, opened or listed is an error;
    /// anything below it that cannot be read is reported through `warn` and counted as
    /// skipped.
    pub fn from_paths(
        paths: &[PathBuf],
        walk: WalkOptions,
        warn: &mut dyn FnMut(&str),
    ) -> Result<InputSet, DedupError> {
        Self::from_operands(paths, walk, false, warn)
    }

    /// [`InputSet::from_paths`], where the operand `-` is standard input and, with `tar`,
    /// every operand that is a file (or `-`) is a tar stream whose regular members are the
    /// items.
    pub fn from_operands(
        paths: &[PathBuf],
        walk: WalkOptions,
        tar: bool,
        warn: &mut dyn FnMut(&str),
    ) -> Result<InputSet, DedupError> {
        let mut w = Walker {
            unreadable: Vec::new(),
            items: Vec::new(),
            skipped: 0,
            duplicates: 0,
            links_not_followed: 0,
            other_file_systems: 0,
            unsized_budget: UNSIZED_TOTAL_CAP,
            seen_files: HashSet::new(),
            seen_dirs: HashSet::new(),
            opts: walk,
            device: None,
            warn,
        };
        // Check every operand first, so that a typo or an unreadable operand fails fast,
        // before any walking.
        let mut metas = Vec::with_capacity(paths.len());
        for p in paths {
            if p.as_os_str() == "-" {
                metas.push(None);
                continue;
            }
            let access = |source| DedupError::Access {
                path: p.clone(),
                source,
            };
            let meta = fs::metadata(p).map_err(access)?;
            if meta.is_dir() {
                fs::read_dir(p).map_err(access)?;
            } else if meta.is_file() {
                File::open(p).map_err(access)?;
            }
            metas.push(Some(meta));
        }
        let mut ancestors = Vec::new();
        for (p, meta) in paths.iter().zip(metas) {
            let Some(meta) = meta else {
                w.items.push(if tar {
                    Item::Tar { path: None, len: 0 }
                } else {
                    Item::Stdin
                });
                continue;
            };
            if tar && meta.is_file() {
                w.items.push(Item::Tar {
                    path: Some(p.clone()),
                    len: meta.len(),
                });
                continue;
            }
            w.device = file_key(&meta).map(|(dev, _)| dev);
            w.visit(p, &meta, &mut ancestors);
        }
        Ok(InputSet {
            source: Source::Paths(paths.to_vec()),
            items: w.items,
            skipped: w.skipped,
            duplicates: w.duplicates,
            links_not_followed: w.links_not_followed,
            other_file_systems: w.other_file_systems,
            unreadable: w.unreadable,
        })
    }

    /// Total size of the items (as found).
    pub fn total_bytes(&self) -> u64 {
        self.items.iter().map(Item::len).sum()
    }
}

/// Identity of a file or directory (device, inode), where the platform has one.
type FileKey = (u64, u64);

#[cfg(unix)]
fn file_key(meta: &fs::Metadata) -> Option<FileKey> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_key(_meta: &fs::Metadata) -> Option<FileKey> {
    None
}

struct Walker<'w> {
    items: Vec<Item>,
    unreadable: Vec<String>,
    skipped: u64,
    duplicates: u64,
    links_not_followed: u64,
    other_file_systems: u64,
    /// What is left of [`UNSIZED_TOTAL_CAP`].
    unsized_budget: u64,
    seen_files: HashSet<FileKey>,
    seen_dirs: HashSet<FileKey>,
    opts: WalkOptions,
    /// The file system of the operand being walked.
    device: Option<u64>,
    warn: &'w mut dyn FnMut(&str),
}

impl Walker<'_> {
    fn skip(&mut self, path: &Path, msg: String) {
        self.skipped += 1;
        name_unreadable(&mut self.unreadable, path.display().to_string());
        (self.warn)(&msg);
    }

    /// `meta` follows symbolic links. `ancestors` are the directories being walked above.
    fn visit(&mut self, path: &Path, meta: &fs::Metadata, ancestors: &mut Vec<FileKey>) {
        let key = file_key(meta);
        if meta.is_file() {
            if let Some(k) = key {
                if !self.seen_files.insert(k) {
                    self.duplicates += 1;
                    return;
                }
            }
            let unsized_ = meta.len() == 0;
            let len = if unsized_ {
                let len = self.unsized_budget.min(UNSIZED_FILE_CAP);
                self.unsized_budget -= len;
                len
            } else {
                meta.len()
            };
            self.items.push(Item::File {
                path: path.to_path_buf(),
                len,
                unsized_,
            });
        } else if meta.is_dir() {
            if let (Some((dev, _)), Some(root), false) =
                (key, self.device, self.opts.cross_file_systems)
            {
                if dev != root {
                    self.other_file_systems += 1;
                    (self.warn)(&format!(
                        "not entering '{}': another file system (--cross-file-systems enters it)",
                        path.display()
                    ));
                    return;
                }
            }
            if let Some(k) = key {
                if ancestors.contains(&k) {
                    self.duplicates += 1;
                    (self.warn)(&format!(
                        "skipping '{}': file system loop (a symbolic link to a directory above it)",
                        path.display()
                    ));
                    return;
                }
                if !self.seen_dirs.insert(k) {
                    self.duplicates += 1;
                    return;
                }
            }
            self.walk_dir(path, key, ancestors);
        } else {
            self.skip(
                path,
                format!(
                    "skipping '{}': not a regular file or directory",
                    path.display()
                ),
            );
        }
    }

    fn walk_dir(&mut self, dir: &Path, key: Option<FileKey>, ancestors: &mut Vec<FileKey>) {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => {
                return self.skip(dir, format!("skipping directory '{}': {e}", dir.display()));
            }
        };
        let mut entries = Vec::new();
        for entry in rd {
            match entry {
                Ok(entry) => entries.push(entry.path()),
                Err(e) => self.skip(
                    dir,
                    format!("skipping an entry of '{}': {e}", dir.display()),
                ),
            }
        }
        entries.sort_unstable();
        ancestors.extend(key);
        for p in entries {
            let meta = if self.opts.follow_links {
                fs::metadata(&p)
            } else {
                fs::symlink_metadata(&p)
            };
            match meta {
                Ok(meta) if meta.file_type().is_symlink() => self.links_not_followed += 1,
                Ok(meta) => self.visit(&p, &meta, ancestors),
                Err(e) => self.skip(&p, format!("skipping '{}': {e}", p.display())),
            }
        }
        if key.is_some() {
            ancestors.pop();
        }
    }
}
