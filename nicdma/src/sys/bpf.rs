//! The `bpf()` system call, for the AF_XDP backend: an XSKMAP, the
//! redirect program, and a BPF link that attaches it to an interface.
//!
//! `union bpf_attr` is built as bytes at the offsets of `<linux/bpf.h>`
//! (the parts each command reads); the rest stays zero, which the kernel
//! requires of fields a command does not use.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `BPF_MAP_CREATE`.
pub const BPF_MAP_CREATE: u32 = 0;
/// `BPF_MAP_UPDATE_ELEM`.
pub const BPF_MAP_UPDATE_ELEM: u32 = 2;
/// `BPF_PROG_LOAD`.
pub const BPF_PROG_LOAD: u32 = 5;
/// `BPF_LINK_CREATE`.
pub const BPF_LINK_CREATE: u32 = 28;
/// `BPF_MAP_TYPE_XSKMAP`.
pub const BPF_MAP_TYPE_XSKMAP: u32 = 17;
/// `BPF_PROG_TYPE_XDP`.
pub const BPF_PROG_TYPE_XDP: u32 = 6;
/// `BPF_XDP` (enum bpf_attach_type).
pub const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_SKB_MODE`: generic XDP, in the kernel's skb path.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: native XDP, in the driver's receive path.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// `BPF_F_XDP_HAS_FRAGS` (prog_flags): the program takes multi-buffer
/// (`xdp.frags`) frames, so the kernel hands it frames longer than a page
/// in pieces instead of linearizing (or dropping) them.
pub const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;
/// `BPF_FUNC_redirect_map`.
pub const BPF_FUNC_REDIRECT_MAP: i32 = 51;
/// `XDP_PASS`.
pub const XDP_PASS: i32 = 2;

/// Size of the attribute buffer passed (smaller than the kernel's union is
/// fine; the kernel zero-extends).
const ATTR_LEN: usize = 128;

fn put32(a: &mut [u8; ATTR_LEN], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(a: &mut [u8; ATTR_LEN], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// `bpf(cmd, attr, sizeof attr)`; the caller keeps every buffer `attr`
/// points at alive across the call.
fn bpf(cmd: u32, attr: &mut [u8; ATTR_LEN]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is an exclusive buffer of ATTR_LEN bytes, the size
    // passed; the kernel reads it (and may write parts of it back). Every
    // pointer stored inside points at memory the callers below keep alive
    // for the duration of this call, with the lengths stored beside it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            libc::c_long::from(cmd as i32),
            attr.as_mut_ptr(),
            ATTR_LEN as libc::c_long,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = libc::c_int::try_from(fd).map_err(|_| io::Error::other("bpf() fd out of range"))?;
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates an XSKMAP of `entries` slots (key: queue index, value: an AF_XDP
/// socket).
pub fn xskmap_create(entries: u32) -> io::Result<OwnedFd> {
    let mut a = [0u8; ATTR_LEN];
    put32(&mut a, 0, BPF_MAP_TYPE_XSKMAP);
    put32(&mut a, 4, 4); // key_size
    put32(&mut a, 8, 4); // value_size
    put32(&mut a, 12, entries);
    a[28..36].copy_from_slice(b"nicdma_x"); // map_name (NUL-padded)
    owned(bpf(BPF_MAP_CREATE, &mut a)?)
}

/// `map[key] = value` (both `u32`).
pub fn map_update_u32(map: BorrowedFd<'_>, key: u32, value: u32) -> io::Result<()> {
    let k = key.to_ne_bytes();
    let v = value.to_ne_bytes();
    let mut a = [0u8; ATTR_LEN];
    put32(&mut a, 0, map.as_raw_fd() as u32);
    put64(&mut a, 8, k.as_ptr() as u64);
    put64(&mut a, 16, v.as_ptr() as u64);
    put64(&mut a, 24, 0); // BPF_ANY
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop)
}

/// Loads an XDP program of `insns` (8-byte instructions); on a verifier
/// error, `log` holds its message.
pub fn prog_load_xdp(insns: &[u64], log: &mut [u8]) -> io::Result<OwnedFd> {
    prog_load_xdp_flags(insns, 0, log)
}

/// [`prog_load_xdp`] with `prog_flags` (e.g. [`BPF_F_XDP_HAS_FRAGS`]).
pub fn prog_load_xdp_flags(insns: &[u64], flags: u32, log: &mut [u8]) -> io::Result<OwnedFd> {
    let license = b"GPL\0";
    let mut a = [0u8; ATTR_LEN];
    put32(&mut a, 0, BPF_PROG_TYPE_XDP);
    put32(&mut a, 4, insns.len() as u32);
    put64(&mut a, 8, insns.as_ptr() as u64);
    put64(&mut a, 16, license.as_ptr() as u64);
    if !log.is_empty() {
        put32(&mut a, 24, 1); // log_level
        put32(&mut a, 28, log.len().min(u32::MAX as usize) as u32);
        put64(&mut a, 32, log.as_mut_ptr() as u64);
    }
    put32(&mut a, 44, flags); // prog_flags
    a[48..54].copy_from_slice(b"nicdma"); // prog_name
    put32(&mut a, 68, BPF_XDP); // expected_attach_type
    owned(bpf(BPF_PROG_LOAD, &mut a)?)
}

/// Attaches XDP program `prog` to interface `ifindex` with `flags`
/// through a BPF link: the program stays attached while the returned
/// descriptor (or a duplicate) is open, and goes away with the last one,
/// also when the process is killed.
pub fn xdp_link_create(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut a = [0u8; ATTR_LEN];
    put32(&mut a, 0, prog.as_raw_fd() as u32);
    put32(&mut a, 4, ifindex);
    put32(&mut a, 8, BPF_XDP);
    put32(&mut a, 12, flags);
    owned(bpf(BPF_LINK_CREATE, &mut a)?)
}

/// Encodes one BPF instruction: `code`, `dst` and `src` registers, the
/// offset and the immediate.
pub const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let lo = (code as u64) | (((dst & 0xf) | ((src & 0xf) << 4)) as u64) << 8;
    let lo = lo | ((off as u16 as u64) << 16);
    if cfg!(target_endian = "little") {
        lo | ((imm as u32 as u64) << 32)
    } else {
        // Big-endian targets store the register nibbles the other way round
        // and the fields in memory order; the u64 is written natively.
        let regs = ((src & 0xf) | ((dst & 0xf) << 4)) as u64;
        ((code as u64) << 56) | (regs << 48) | ((off as u16 as u64) << 32) | (imm as u32 as u64)
    }
}

/// The redirect program (the one libxdp/xdp-tools load by default, in its
/// simplest form): each frame goes to the AF_XDP socket in `xskmap`'s slot
/// for its RX queue, or on to the kernel's stack (`XDP_PASS`) if that slot
/// is empty.
///
/// ```text
/// r2 = *(u32 *)(r1 + 16)   ; ctx->rx_queue_index
/// r1 = map_fd(xskmap)      ; ld_imm64, BPF_PSEUDO_MAP_FD (two slots)
/// r3 = XDP_PASS            ; flags: the action when the slot is empty
/// call bpf_redirect_map
/// exit
/// ```
pub fn redirect_program(xskmap: BorrowedFd<'_>) -> [u64; 6] {
    const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
    const LD_IMM64: u8 = 0x18; // BPF_LD | BPF_IMM | BPF_DW
    const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
    const PSEUDO_MAP_FD: u8 = 1;
    [
        insn(LDX_MEM_W, 2, 1, 16, 0),
        insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, xskmap.as_raw_fd()),
        insn(0, 0, 0, 0, 0),
        insn(MOV64_K, 3, 0, 0, XDP_PASS),
        insn(CALL, 0, 0, 0, BPF_FUNC_REDIRECT_MAP),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_endian = "little")]
    fn instructions_encode_as_the_kernel_reads_them() {
        // r2 = *(u32 *)(r1 + 16): 61 12 10 00 00 00 00 00
        assert_eq!(
            insn(0x61, 2, 1, 16, 0).to_le_bytes(),
            [0x61, 0x12, 0x10, 0, 0, 0, 0, 0]
        );
        // r3 = 2: b7 03 00 00 02 00 00 00
        assert_eq!(
            insn(0xb7, 3, 0, 0, 2).to_le_bytes(),
            [0xb7, 0x03, 0, 0, 2, 0, 0, 0]
        );
        // call 51: 85 00 00 00 33 00 00 00
        assert_eq!(
            insn(0x85, 0, 0, 0, 51).to_le_bytes(),
            [0x85, 0, 0, 0, 0x33, 0, 0, 0]
        );
        // r1 = map fd 7 (pseudo): 18 11 00 00 07 00 00 00
        assert_eq!(
            insn(0x18, 1, 1, 0, 7).to_le_bytes(),
            [0x18, 0x11, 0, 0, 7, 0, 0, 0]
        );
        assert_eq!(
            insn(0x95, 0, 0, 0, 0).to_le_bytes(),
            [0x95, 0, 0, 0, 0, 0, 0, 0]
        );
    }
}
