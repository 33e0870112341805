//! The netmap user ABI (API version 14), transcribed from netmap's
//! `sys/net/netmap.h` (luigirizzo/netmap, master) and `netmap_user.h`, and
//! the netmap(4) man page. Each struct is `repr(C)` with the header's field
//! order and types; the tests below check sizes, field offsets and the
//! ioctl numbers against values worked out by hand from the header (x86-64
//! and aarch64 Linux: LP64, the generic `_IOC` encoding).
//!
//! Pointers in requests (`nr_body`, `nr_options`, `nro_next`,
//! `nro_usrptr`) are `u64` in the header: user addresses. Nothing here is
//! unsafe; the ioctls that pass these structs are in `sys::netmap`.

/// `NETMAP_API`: the API version this ABI is (the kernel accepts
/// `NETMAP_MIN_API` 14 ..= `NETMAP_MAX_API` 15).
pub const NETMAP_API: u16 = 14;

/// `IFNAMSIZ` (from `<net/if.h>`): `netmap_if.ni_name`'s size.
pub const IFNAMSIZ: usize = 16;
/// `NETMAP_REQ_IFNAMSIZ`: `nmreq_header.nr_name`'s size.
pub const NETMAP_REQ_IFNAMSIZ: usize = 64;
/// `NM_CACHE_ALIGN`: the alignment of `netmap_ring.sem`.
pub const NM_CACHE_ALIGN: usize = 128;

// Slot flags (`netmap_slot.flags`).
/// `NS_BUF_CHANGED`: `buf_idx` changed (set by whoever changed it: the
/// application when it swaps a buffer in, the kernel when a pipe swaps).
pub const NS_BUF_CHANGED: u16 = 0x0001;
/// `NS_REPORT`: ask for a notification when the slot has been sent.
pub const NS_REPORT: u16 = 0x0002;
/// `NS_FORWARD`: pass the packet to the peer ring (host/NIC).
pub const NS_FORWARD: u16 = 0x0004;
/// `NS_NO_LEARN`: (VALE) do not learn the source port.
pub const NS_NO_LEARN: u16 = 0x0008;
/// `NS_INDIRECT`: (VALE TX) data is at `ptr`, a user address.
pub const NS_INDIRECT: u16 = 0x0010;
/// `NS_MOREFRAG`: more fragments of the packet follow in the next slot.
pub const NS_MOREFRAG: u16 = 0x0020;
/// `NS_TXMON`: (monitors) the slot was seen on a TX ring.
pub const NS_TXMON: u16 = 0x0040;
/// `NS_PORT_SHIFT`: (VALE) the destination port in the flags' high byte.
pub const NS_PORT_SHIFT: u16 = 8;
/// `NS_PORT_MASK`: `0xff << NS_PORT_SHIFT`.
pub const NS_PORT_MASK: u16 = 0xff << NS_PORT_SHIFT;
/// `NETMAP_MAX_FRAGS`: the most slots one packet spans.
pub const NETMAP_MAX_FRAGS: usize = 64;

// Ring flags (`netmap_ring.flags`).
/// `NR_TIMESTAMP`: set `ts` on every sync.
pub const NR_TIMESTAMP: u32 = 0x0002;
/// `NR_FORWARD`: enable `NS_FORWARD` on the ring.
pub const NR_FORWARD: u32 = 0x0004;

/// `NI_PRIV_MEM` (`netmap_if.ni_flags`): a private memory region.
pub const NI_PRIV_MEM: u32 = 0x1;

// Request types (`nmreq_header.nr_reqtype`), the header's first enum.
/// `NETMAP_REQ_REGISTER`: bind a port to the file descriptor.
pub const NETMAP_REQ_REGISTER: u16 = 1;
/// `NETMAP_REQ_PORT_INFO_GET`.
pub const NETMAP_REQ_PORT_INFO_GET: u16 = 2;
/// `NETMAP_REQ_VALE_ATTACH`.
pub const NETMAP_REQ_VALE_ATTACH: u16 = 3;
/// `NETMAP_REQ_VALE_DETACH`.
pub const NETMAP_REQ_VALE_DETACH: u16 = 4;
/// `NETMAP_REQ_POOLS_INFO_GET` (the 12th entry).
pub const NETMAP_REQ_POOLS_INFO_GET: u16 = 12;

// Option types (`nmreq_option.nro_reqtype`), the header's second enum.
/// `NETMAP_REQ_OPT_EXTMEM`: on REGISTER, the port's memory (if, rings,
/// buffers) is carved out of a user-supplied region.
pub const NETMAP_REQ_OPT_EXTMEM: u32 = 1;
/// `NETMAP_REQ_OPT_CSB`.
pub const NETMAP_REQ_OPT_CSB: u32 = 3;
/// `NETMAP_REQ_OPT_OFFSETS`.
pub const NETMAP_REQ_OPT_OFFSETS: u32 = 5;

// `nmreq_register.nr_mode` values (`NR_REG_*`).
/// `NR_REG_ALL_NIC`: all NIC rings.
pub const NR_REG_ALL_NIC: u32 = 1;
/// `NR_REG_SW`: the host rings only.
pub const NR_REG_SW: u32 = 2;
/// `NR_REG_NIC_SW`: NIC and host rings.
pub const NR_REG_NIC_SW: u32 = 3;
/// `NR_REG_ONE_NIC`: the one NIC ring pair `nr_ringid`.
pub const NR_REG_ONE_NIC: u32 = 4;
/// `NR_REG_NULL`.
pub const NR_REG_NULL: u32 = 7;
/// `NR_REG_ONE_SW`: the one host ring pair `nr_ringid`.
pub const NR_REG_ONE_SW: u32 = 8;

// `nmreq_register.nr_flags`.
/// `NR_EXCLUSIVE`: exclusive access to the selected rings.
pub const NR_EXCLUSIVE: u64 = 0x800;
/// `NR_NO_TX_POLL`: `poll()` pushes TX only with POLLOUT.
pub const NR_NO_TX_POLL: u64 = 0x20000;

/// `struct netmap_slot`: one buffer descriptor.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetmapSlot {
    /// Buffer index.
    pub buf_idx: u32,
    /// Length of the data in the buffer.
    pub len: u16,
    /// `NS_*` flags.
    pub flags: u16,
    /// Pointer for indirect buffers (and the offset field with
    /// `NETMAP_REQ_OPT_OFFSETS`).
    pub ptr: u64,
}

/// `uint8_t __attribute__((__aligned__(NM_CACHE_ALIGN))) sem[128]`.
#[repr(C, align(128))]
#[derive(Debug, Clone, Copy)]
pub struct Sem(pub [u8; 128]);

/// `struct netmap_ring`: the header of one ring; `num_slots` slots follow
/// it (`slot[]`, at `size_of::<NetmapRing>()`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NetmapRing {
    /// Offset of the buffer region from this ring.
    pub buf_ofs: i64,
    /// Slots in the ring (not necessarily a power of two).
    pub num_slots: u32,
    /// Bytes of each buffer.
    pub nr_buf_size: u32,
    /// Ring id.
    pub ringid: u16,
    /// 0: TX, 1: RX.
    pub dir: u16,
    /// (user) First slot the user owns.
    pub head: u32,
    /// (user) Wake-up point.
    pub cur: u32,
    /// (kernel) First slot the kernel owns.
    pub tail: u32,
    /// `NR_*` ring flags.
    pub flags: u32,
    /// (kernel) Time of the last sync.
    pub ts: libc::timeval,
    /// Mask of the offset part of `ptr` (0 without `NETMAP_REQ_OPT_OFFSETS`).
    pub offset_mask: u64,
    /// Alignment for the start of packets in the buffers.
    pub buf_align: u64,
    /// Opaque room for a lock.
    pub sem: Sem,
    /// The slots follow (a flexible array member).
    pub slot: [NetmapSlot; 0],
}

/// `struct netmap_if`: one per bound file descriptor; `ring_ofs[]`
/// (`ssize_t`, offsets from this struct) follows: NIC TX rings, host TX
/// rings, NIC RX rings, host RX rings.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NetmapIf {
    /// The interface's name.
    pub ni_name: [u8; IFNAMSIZ],
    /// API version (unused).
    pub ni_version: u32,
    /// `NI_*` flags.
    pub ni_flags: u32,
    /// Hardware TX rings.
    pub ni_tx_rings: u32,
    /// Hardware RX rings.
    pub ni_rx_rings: u32,
    /// Index of the first extra buffer (linked through each buffer's first
    /// `u32`; 0 ends the list). On close the kernel frees this list.
    pub ni_bufs_head: u32,
    /// Host (software) TX rings.
    pub ni_host_tx_rings: u32,
    /// Host (software) RX rings.
    pub ni_host_rx_rings: u32,
    /// Spare.
    pub ni_spare1: [u32; 3],
    /// The ring offsets follow (a flexible array member).
    pub ring_ofs: [isize; 0],
}

/// `struct nmreq_header`: every `NIOCCTRL` request.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NmreqHeader {
    /// API version ([`NETMAP_API`]).
    pub nr_version: u16,
    /// `NETMAP_REQ_*`.
    pub nr_reqtype: u16,
    /// Must be zero.
    pub nr_reserved: u32,
    /// The port's name (without `netmap:`), NUL-terminated.
    pub nr_name: [u8; NETMAP_REQ_IFNAMSIZ],
    /// Address of the first `nmreq_option` (0: none).
    pub nr_options: u64,
    /// Address of the request body (`nmreq_register`, ...).
    pub nr_body: u64,
}

/// `struct nmreq_register`: the body of `NETMAP_REQ_REGISTER`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqRegister {
    /// (out) Offset of the `netmap_if` in the shared region.
    pub nr_offset: u64,
    /// (out) Size of the shared region.
    pub nr_memsize: u64,
    /// (in/out) Slots in TX rings.
    pub nr_tx_slots: u32,
    /// (in/out) Slots in RX rings.
    pub nr_rx_slots: u32,
    /// (in/out) TX rings.
    pub nr_tx_rings: u16,
    /// (in/out) RX rings.
    pub nr_rx_rings: u16,
    /// (in/out) Host TX rings.
    pub nr_host_tx_rings: u16,
    /// (in/out) Host RX rings.
    pub nr_host_rx_rings: u16,
    /// (in/out) Memory allocator id.
    pub nr_mem_id: u16,
    /// (in) The ring, for `NR_REG_ONE_NIC`/`NR_REG_ONE_SW`.
    pub nr_ringid: u16,
    /// (in) `NR_REG_*`.
    pub nr_mode: u32,
    /// (in/out) Extra buffers wanted / allocated.
    pub nr_extra_bufs: u32,
    /// (in) `NR_*` flags.
    pub nr_flags: u64,
}

/// `struct nmreq_option`: the header of every option.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqOption {
    /// Address of the next option (0: none).
    pub nro_next: u64,
    /// `NETMAP_REQ_OPT_*`.
    pub nro_reqtype: u32,
    /// (out) 0: processed; else an errno.
    pub nro_status: u32,
    /// Size, for variable-size options (0 otherwise).
    pub nro_size: u64,
}

/// `struct nmreq_pools_info`: the layout of a memory allocator.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqPoolsInfo {
    /// Size of the region.
    pub nr_memsize: u64,
    /// (in/out) Allocator id.
    pub nr_mem_id: u16,
    /// Padding.
    pub pad1: [u16; 3],
    /// Offset of the `netmap_if` pool.
    pub nr_if_pool_offset: u64,
    /// Objects in the `netmap_if` pool.
    pub nr_if_pool_objtotal: u32,
    /// Bytes of one `netmap_if` object.
    pub nr_if_pool_objsize: u32,
    /// Offset of the ring pool.
    pub nr_ring_pool_offset: u64,
    /// Objects in the ring pool.
    pub nr_ring_pool_objtotal: u32,
    /// Bytes of one ring object.
    pub nr_ring_pool_objsize: u32,
    /// Offset of the buffer pool.
    pub nr_buf_pool_offset: u64,
    /// Buffers in the pool.
    pub nr_buf_pool_objtotal: u32,
    /// Bytes of one buffer.
    pub nr_buf_pool_objsize: u32,
}

/// `struct nmreq_opt_extmem`: `NETMAP_REQ_OPT_EXTMEM`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqOptExtmem {
    /// The common header.
    pub nro_opt: NmreqOption,
    /// (in) Address of the user's region.
    pub nro_usrptr: u64,
    /// (in/out) The pools to carve out of it (zeros take defaults).
    pub nro_info: NmreqPoolsInfo,
}

// `<asm-generic/ioctl.h>`: nr 8 bits, type 8 bits, size 14 bits, dir 2
// bits; _IOC_NONE 0, _IOC_WRITE 1, _IOC_READ 2. powerpc, mips and sparc
// (`<asm/ioctl.h>` there): size 13 bits, dir 3 bits; NONE 1, READ 2,
// WRITE 4.
#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc64"
))]
const IOC_SIZEBITS_NONE_READ_WRITE: (u32, u32, u32, u32) = (13, 1, 2, 4);
#[cfg(not(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc64"
)))]
const IOC_SIZEBITS_NONE_READ_WRITE: (u32, u32, u32, u32) = (14, 0, 2, 1);

/// `_IOC(dir, type, nr, size)`.
const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    let (size_bits, ..) = IOC_SIZEBITS_NONE_READ_WRITE;
    // _IOC_NRSHIFT 0, _IOC_TYPESHIFT 8, _IOC_SIZESHIFT 16,
    // _IOC_DIRSHIFT 16 + size bits.
    (dir << (16 + size_bits)) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

/// `_IOWR(ty, nr, size)`.
const fn iowr(ty: u8, nr: u8, size: usize) -> u32 {
    let (_, _, read, write) = IOC_SIZEBITS_NONE_READ_WRITE;
    ioc(read | write, ty, nr, size)
}

/// `_IO(ty, nr)`.
const fn io(ty: u8, nr: u8) -> u32 {
    let (_, none, ..) = IOC_SIZEBITS_NONE_READ_WRITE;
    ioc(none, ty, nr, 0)
}

/// `NIOCCTRL`: `_IOWR('i', 151, struct nmreq_header)`.
pub const NIOCCTRL: u32 = iowr(b'i', 151, std::mem::size_of::<NmreqHeader>());
/// `NIOCTXSYNC`: `_IO('i', 148)`: push TX slots up to `head`, report
/// completed ones by moving `tail`.
pub const NIOCTXSYNC: u32 = io(b'i', 148);
/// `NIOCRXSYNC`: `_IO('i', 149)`: give RX slots up to `head` back, report
/// new packets by moving `tail`.
pub const NIOCRXSYNC: u32 = io(b'i', 149);

impl NmreqHeader {
    /// A request of `reqtype` for port `name` (without `netmap:`); `None`
    /// when the name (with its NUL) does not fit or contains a NUL.
    pub fn new(reqtype: u16, name: &str) -> Option<NmreqHeader> {
        let b = name.as_bytes();
        if b.is_empty() || b.len() >= NETMAP_REQ_IFNAMSIZ || b.contains(&0) {
            return None;
        }
        let mut h = NmreqHeader {
            nr_version: NETMAP_API,
            nr_reqtype: reqtype,
            nr_reserved: 0,
            nr_name: [0; NETMAP_REQ_IFNAMSIZ],
            nr_options: 0,
            nr_body: 0,
        };
        h.nr_name[..b.len()].copy_from_slice(b);
        Some(h)
    }
}

/// Byte offsets of the fields the port reads and writes in the shared
/// region (the same numbers as `offset_of!`, checked in the tests), for
/// access through the region's bounds-checked accessors.
pub mod off {
    use super::{NetmapIf, NetmapRing, NetmapSlot};
    use std::mem::{offset_of, size_of};

    /// `netmap_if.ni_tx_rings`.
    pub const IF_TX_RINGS: usize = offset_of!(NetmapIf, ni_tx_rings);
    /// `netmap_if.ni_rx_rings`.
    pub const IF_RX_RINGS: usize = offset_of!(NetmapIf, ni_rx_rings);
    /// `netmap_if.ni_bufs_head`.
    pub const IF_BUFS_HEAD: usize = offset_of!(NetmapIf, ni_bufs_head);
    /// `netmap_if.ni_host_tx_rings`.
    pub const IF_HOST_TX_RINGS: usize = offset_of!(NetmapIf, ni_host_tx_rings);
    /// `netmap_if.ni_host_rx_rings`.
    pub const IF_HOST_RX_RINGS: usize = offset_of!(NetmapIf, ni_host_rx_rings);
    /// `netmap_if.ring_ofs`.
    pub const IF_RING_OFS: usize = offset_of!(NetmapIf, ring_ofs);
    /// `netmap_ring.buf_ofs`.
    pub const RING_BUF_OFS: usize = offset_of!(NetmapRing, buf_ofs);
    /// `netmap_ring.num_slots`.
    pub const RING_NUM_SLOTS: usize = offset_of!(NetmapRing, num_slots);
    /// `netmap_ring.nr_buf_size`.
    pub const RING_BUF_SIZE: usize = offset_of!(NetmapRing, nr_buf_size);
    /// `netmap_ring.dir`.
    pub const RING_DIR: usize = offset_of!(NetmapRing, dir);
    /// `netmap_ring.head`.
    pub const RING_HEAD: usize = offset_of!(NetmapRing, head);
    /// `netmap_ring.cur`.
    pub const RING_CUR: usize = offset_of!(NetmapRing, cur);
    /// `netmap_ring.tail`.
    pub const RING_TAIL: usize = offset_of!(NetmapRing, tail);
    /// `netmap_ring.slot`.
    pub const RING_SLOTS: usize = offset_of!(NetmapRing, slot);
    /// `sizeof(struct netmap_slot)`.
    pub const SLOT_SIZE: usize = size_of::<NetmapSlot>();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    // The expected numbers are worked out by hand from `sys/net/netmap.h`
    // (API 14) for LP64 Linux (x86-64, aarch64): u64/i64/ssize_t/time_t are
    // 8 bytes and 8-aligned, struct timeval is { time_t; suseconds_t } = 16.

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn netmap_slot_layout() {
        // u32 buf_idx @0; u16 len @4; u16 flags @6; u64 ptr @8 -> 16.
        assert_eq!(size_of::<NetmapSlot>(), 16);
        assert_eq!(offset_of!(NetmapSlot, buf_idx), 0);
        assert_eq!(offset_of!(NetmapSlot, len), 4);
        assert_eq!(offset_of!(NetmapSlot, flags), 6);
        assert_eq!(offset_of!(NetmapSlot, ptr), 8);
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn netmap_ring_layout() {
        // i64 buf_ofs @0; u32 num_slots @8; u32 nr_buf_size @12;
        // u16 ringid @16; u16 dir @18; u32 head @20, cur @24, tail @28,
        // flags @32; (4 bytes padding: timeval is 8-aligned) ts @40 (16);
        // u64 offset_mask @56; u64 buf_align @64; sem[128] aligned to
        // NM_CACHE_ALIGN = 128 -> @128; slot[] @256; the struct's size is
        // 256 (a multiple of its 128 alignment).
        assert_eq!(offset_of!(NetmapRing, buf_ofs), 0);
        assert_eq!(offset_of!(NetmapRing, num_slots), 8);
        assert_eq!(offset_of!(NetmapRing, nr_buf_size), 12);
        assert_eq!(offset_of!(NetmapRing, ringid), 16);
        assert_eq!(offset_of!(NetmapRing, dir), 18);
        assert_eq!(offset_of!(NetmapRing, head), 20);
        assert_eq!(offset_of!(NetmapRing, cur), 24);
        assert_eq!(offset_of!(NetmapRing, tail), 28);
        assert_eq!(offset_of!(NetmapRing, flags), 32);
        assert_eq!(offset_of!(NetmapRing, ts), 40);
        assert_eq!(offset_of!(NetmapRing, offset_mask), 56);
        assert_eq!(offset_of!(NetmapRing, buf_align), 64);
        assert_eq!(offset_of!(NetmapRing, sem), 128);
        assert_eq!(offset_of!(NetmapRing, slot), 256);
        assert_eq!(size_of::<NetmapRing>(), 256);
        assert_eq!(align_of::<NetmapRing>(), NM_CACHE_ALIGN);
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn netmap_if_layout() {
        // char ni_name[16] @0; u32 ni_version @16, ni_flags @20,
        // ni_tx_rings @24, ni_rx_rings @28, ni_bufs_head @32,
        // ni_host_tx_rings @36, ni_host_rx_rings @40, ni_spare1[3] @44..56;
        // ssize_t ring_ofs[] @56 (8-aligned already) -> size 56.
        assert_eq!(offset_of!(NetmapIf, ni_name), 0);
        assert_eq!(offset_of!(NetmapIf, ni_version), 16);
        assert_eq!(offset_of!(NetmapIf, ni_flags), 20);
        assert_eq!(offset_of!(NetmapIf, ni_tx_rings), 24);
        assert_eq!(offset_of!(NetmapIf, ni_rx_rings), 28);
        assert_eq!(offset_of!(NetmapIf, ni_bufs_head), 32);
        assert_eq!(offset_of!(NetmapIf, ni_host_tx_rings), 36);
        assert_eq!(offset_of!(NetmapIf, ni_host_rx_rings), 40);
        assert_eq!(offset_of!(NetmapIf, ni_spare1), 44);
        assert_eq!(offset_of!(NetmapIf, ring_ofs), 56);
        assert_eq!(size_of::<NetmapIf>(), 56);
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn request_layouts() {
        // nmreq_header: u16 nr_version @0; u16 nr_reqtype @2;
        // u32 nr_reserved @4; char nr_name[64] @8..72; u64 nr_options @72;
        // u64 nr_body @80 -> 88.
        assert_eq!(size_of::<NmreqHeader>(), 88);
        assert_eq!(offset_of!(NmreqHeader, nr_version), 0);
        assert_eq!(offset_of!(NmreqHeader, nr_reqtype), 2);
        assert_eq!(offset_of!(NmreqHeader, nr_reserved), 4);
        assert_eq!(offset_of!(NmreqHeader, nr_name), 8);
        assert_eq!(offset_of!(NmreqHeader, nr_options), 72);
        assert_eq!(offset_of!(NmreqHeader, nr_body), 80);

        // nmreq_register: u64 nr_offset @0, nr_memsize @8; u32 nr_tx_slots
        // @16, nr_rx_slots @20; u16 nr_tx_rings @24, nr_rx_rings @26,
        // nr_host_tx_rings @28, nr_host_rx_rings @30, nr_mem_id @32,
        // nr_ringid @34; u32 nr_mode @36, nr_extra_bufs @40; (4 padding)
        // u64 nr_flags @48 -> 56.
        assert_eq!(size_of::<NmreqRegister>(), 56);
        assert_eq!(offset_of!(NmreqRegister, nr_offset), 0);
        assert_eq!(offset_of!(NmreqRegister, nr_memsize), 8);
        assert_eq!(offset_of!(NmreqRegister, nr_tx_slots), 16);
        assert_eq!(offset_of!(NmreqRegister, nr_rx_slots), 20);
        assert_eq!(offset_of!(NmreqRegister, nr_tx_rings), 24);
        assert_eq!(offset_of!(NmreqRegister, nr_rx_rings), 26);
        assert_eq!(offset_of!(NmreqRegister, nr_host_tx_rings), 28);
        assert_eq!(offset_of!(NmreqRegister, nr_host_rx_rings), 30);
        assert_eq!(offset_of!(NmreqRegister, nr_mem_id), 32);
        assert_eq!(offset_of!(NmreqRegister, nr_ringid), 34);
        assert_eq!(offset_of!(NmreqRegister, nr_mode), 36);
        assert_eq!(offset_of!(NmreqRegister, nr_extra_bufs), 40);
        assert_eq!(offset_of!(NmreqRegister, nr_flags), 48);

        // nmreq_option: u64 nro_next @0; u32 nro_reqtype @8, nro_status
        // @12; u64 nro_size @16 -> 24.
        assert_eq!(size_of::<NmreqOption>(), 24);
        assert_eq!(offset_of!(NmreqOption, nro_next), 0);
        assert_eq!(offset_of!(NmreqOption, nro_reqtype), 8);
        assert_eq!(offset_of!(NmreqOption, nro_status), 12);
        assert_eq!(offset_of!(NmreqOption, nro_size), 16);

        // nmreq_pools_info: u64 nr_memsize @0; u16 nr_mem_id @8;
        // u16 pad1[3] @10..16; if pool: u64 offset @16, u32 objtotal @24,
        // u32 objsize @28; ring pool @32/40/44; buf pool @48/56/60 -> 64.
        assert_eq!(size_of::<NmreqPoolsInfo>(), 64);
        assert_eq!(offset_of!(NmreqPoolsInfo, nr_memsize), 0);
        assert_eq!(offset_of!(NmreqPoolsInfo, nr_mem_id), 8);
        assert_eq!(offset_of!(NmreqPoolsInfo, nr_if_pool_offset), 16);
        assert_eq!(offset_of!(NmreqPoolsInfo, nr_if_pool_objtotal), 24);
        assert_eq!(offset_of!(NmreqPoolsInfo, nr_if_pool_objsize), 28);
        assert_eq!(offset_of!(NmreqPoolsInfo, nr_ring_pool_offset), 32);
        assert_eq!(offset_of!(NmreqPoolsInfo, nr_ring_pool_objtotal), 40);
        assert_eq!(offset_of!(NmreqPoolsInfo, nr_ring_pool_objsize), 44);
        assert_eq!(offset_of!(NmreqPoolsInfo, nr_buf_pool_offset), 48);
        assert_eq!(offset_of!(NmreqPoolsInfo, nr_buf_pool_objtotal), 56);
        assert_eq!(offset_of!(NmreqPoolsInfo, nr_buf_pool_objsize), 60);

        // nmreq_opt_extmem: nmreq_option nro_opt @0 (24); u64 nro_usrptr
        // @24; nmreq_pools_info nro_info @32 (64) -> 96.
        assert_eq!(size_of::<NmreqOptExtmem>(), 96);
        assert_eq!(offset_of!(NmreqOptExtmem, nro_opt), 0);
        assert_eq!(offset_of!(NmreqOptExtmem, nro_usrptr), 24);
        assert_eq!(offset_of!(NmreqOptExtmem, nro_info), 32);
    }

    #[test]
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    fn ioctl_numbers() {
        // _IOWR('i', 151, struct nmreq_header): dir READ|WRITE = 3 << 30 =
        // 0xC000_0000; size 88 = 0x58 << 16 = 0x0058_0000; type 'i' = 0x69
        // << 8 = 0x6900; nr 151 = 0x97 -> 0xC058_6997.
        assert_eq!(NIOCCTRL, 0xC058_6997);
        // _IO('i', 148) and _IO('i', 149): dir NONE = 0, size 0 -> 0x6994,
        // 0x6995.
        assert_eq!(NIOCTXSYNC, 0x6994);
        assert_eq!(NIOCRXSYNC, 0x6995);
    }

    #[test]
    fn constants_and_names() {
        assert_eq!(NS_PORT_MASK, 0xff00);
        assert_eq!(
            [
                NS_BUF_CHANGED,
                NS_REPORT,
                NS_FORWARD,
                NS_NO_LEARN,
                NS_INDIRECT,
                NS_MOREFRAG
            ],
            [1, 2, 4, 8, 0x10, 0x20]
        );
        let h = NmreqHeader::new(NETMAP_REQ_REGISTER, "vale0:1").unwrap();
        assert_eq!(h.nr_version, 14);
        assert_eq!(&h.nr_name[..8], b"vale0:1\0");
        assert!(NmreqHeader::new(NETMAP_REQ_REGISTER, &"x".repeat(63)).is_some());
        assert!(NmreqHeader::new(NETMAP_REQ_REGISTER, &"x".repeat(64)).is_none());
        assert!(NmreqHeader::new(NETMAP_REQ_REGISTER, "").is_none());
        assert!(NmreqHeader::new(NETMAP_REQ_REGISTER, "a\0b").is_none());
        assert_eq!(off::RING_SLOTS, 256);
        assert_eq!(off::SLOT_SIZE, 16);
    }
}
