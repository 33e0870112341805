//! Process hooks: fork, the exec family (the report is written before the image goes; a child
//! of a stack process hands its stack descriptors to the new image in the environment) and
//! `_exit`/`_Exit` (which skip `atexit` handlers).

#![allow(clippy::missing_safety_doc)]

#[allow(clippy::wildcard_imports)]
use super::*;

/// `fork`: the child's fresh account is made by the `pthread_atfork` child handler (which also
/// covers forks the shim does not see, such as the ones inside other libraries).
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn fork() -> libc::pid_t {
    count(Call::Fork);
    // SAFETY: as above.
    unsafe { real::fork() }
}

/// `vfork` (x86-64): records the calling process in a thread-local (so that hooks in the
/// child, which runs on this thread's memory until it execs or exits, change nothing of the
/// parent's: [`guard::in_vfork_child`]), then *jumps* to libc's `vfork`. A wrapper that called
/// it and returned would break: the child's return pops the frame the parent returns through.
/// Jumping leaves the application's return address on the stack, as a direct call would.
#[cfg(all(target_arch = "x86_64", not(test)))]
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn vfork() -> libc::pid_t {
    core::arch::naked_asm!(
        // Entry: rsp = 8 mod 16 (the return address). Align, call, restore, jump.
        "sub rsp, 8",
        "call {prepare}",
        "add rsp, 8",
        "jmp rax",
        prepare = sym vfork_prepare,
    )
}

/// `__vfork` is `vfork` under glibc's internal name.
#[cfg(all(target_arch = "x86_64", not(test)))]
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn __vfork() -> libc::pid_t {
    core::arch::naked_asm!("jmp {v}", v = sym vfork)
}

/// Notes the vfork and returns the address of libc's `vfork` (of `fork` if there is none:
/// POSIX allows `vfork` to be `fork`).
#[cfg(all(target_arch = "x86_64", not(test)))]
extern "C" fn vfork_prepare() -> usize {
    let _ = guard::shielded(|| {
        if crate::enabled() {
            count(Call::Vfork);
        }
        guard::vforking(crate::sys::getpid());
    });
    match real::vfork_address() {
        0 => real::fork_address(),
        a => a,
    }
}

/// Writes this image's report before `exec` replaces it.
fn before_exec() {
    crate::stack::exiting("exec");
    crate::local::before_exec();
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(Call::Exec);
            trace::finish("exec");
        });
    }
}

/// The environment for the new image when this process is a child of a stack process: `envp`
/// (or `environ`) without an old hand-over entry, with this image's (see
/// `stack::proxy::exec_entry`). `None`: the environment stays as it is.
///
/// # Safety
/// `envp` is null or a null-terminated array of C strings.
unsafe fn stack_env(envp: *const *const c_char) -> Option<(std::ffi::CString, Vec<*const c_char>)> {
    let entry = crate::stack::proxy::exec_entry()?;
    let mut v = Vec::new();
    if !envp.is_null() {
        for i in 0.. {
            // SAFETY: a null-terminated array: entries up to the null are readable.
            let p = unsafe { std::ptr::read(envp.wrapping_add(i)) };
            if p.is_null() {
                break;
            }
            // SAFETY: each entry is a C string.
            let bytes = unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes();
            if !crate::stack::proxy::is_exec_entry(bytes) {
                v.push(p);
            }
        }
    }
    v.push(entry.as_ptr());
    v.push(std::ptr::null());
    Some((entry, v))
}

extern "C" {
    static environ: *const *const c_char;
}

/// The process's environment array.
fn environ_now() -> *const *const c_char {
    // SAFETY: reading libc's `environ` pointer (exec reads it the same way).
    unsafe { environ }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    before_exec();
    // SAFETY: the caller's environment array.
    if let Some((_entry, env)) = unsafe { stack_env(envp) } {
        // SAFETY: the caller's arguments with the new environment (alive across the call).
        return unsafe { real::execve(path, argv, env.as_ptr()) };
    }
    // SAFETY: as above.
    unsafe { real::execve(path, argv, envp) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    before_exec();
    // SAFETY: the process's environment array.
    if let Some((_entry, env)) = unsafe { stack_env(environ_now()) } {
        // SAFETY: as above.
        return unsafe { real::execve(path, argv, env.as_ptr()) };
    }
    // SAFETY: as above.
    unsafe { real::execv(path, argv) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    before_exec();
    // SAFETY: the process's environment array.
    if let Some((_entry, env)) = unsafe { stack_env(environ_now()) } {
        // SAFETY: as above.
        return unsafe { real::execvpe(file, argv, env.as_ptr()) };
    }
    // SAFETY: as above.
    unsafe { real::execvp(file, argv) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    before_exec();
    // SAFETY: the caller's environment array.
    if let Some((_entry, env)) = unsafe { stack_env(envp) } {
        // SAFETY: as above.
        return unsafe { real::execvpe(file, argv, env.as_ptr()) };
    }
    // SAFETY: as above.
    unsafe { real::execvpe(file, argv, envp) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn fexecve(
    fd: c_int,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    before_exec();
    // SAFETY: the caller's environment array.
    if let Some((_entry, env)) = unsafe { stack_env(envp) } {
        // SAFETY: as above.
        return unsafe { real::fexecve(fd, argv, env.as_ptr()) };
    }
    // SAFETY: as above.
    unsafe { real::fexecve(fd, argv, envp) }
}

/// `prctl(PR_SET_SECCOMP, ...)`: the process sandboxes itself (sshd's pre-authentication
/// child). After that, a system call the application never makes (a thread's `clone3`, `open`
/// for a report, `getsockopt` to probe a descriptor) may kill it with SIGSYS. So the shim
/// writes this image's report now (reason `sandbox`; the traffic after it is not counted) and
/// becomes a plain pass-through for the rest of the image: no system call of its own again.
/// (A filter installed with the raw `seccomp` system call is not seen.)
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn prctl(
    option: c_int,
    a2: c_ulong,
    a3: c_ulong,
    a4: c_ulong,
    a5: c_ulong,
) -> c_int {
    if option == libc::PR_SET_SECCOMP {
        if let Some(_g) = active() {
            guard::shielded(|| {
                account().count(Call::Prctl);
                trace::finish("sandbox");
            });
        }
        crate::disable();
    }
    // SAFETY: as above.
    unsafe { real::prctl(option, a2, a3, a4, a5) }
}

/// Writes `SIG_DFL` (no flags, empty mask) into the application's `old`, if any.
///
/// # Safety
/// `old` is null or a writable sigaction.
unsafe fn default_action(old: *mut libc::sigaction) {
    if !old.is_null() {
        // SAFETY: an all-zero sigaction is SIG_DFL with no flags and an empty mask.
        let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: the caller's writable sigaction.
        unsafe { std::ptr::write(old, dfl) };
    }
}

/// `sigaction`: for SIGTERM and SIGINT while the shim's report handler holds them, the
/// application sees and keeps the default disposition it believes in (see `lifecycle`).
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    if let Some(i) = crate::lifecycle::ours(sig) {
        // SAFETY: the caller's `act` is null or a valid sigaction.
        let keeps_default = act.is_null() || unsafe { (*act).sa_sigaction } == libc::SIG_DFL;
        if keeps_default {
            // SAFETY: the caller's `old` is null or writable.
            unsafe { default_action(old) };
            return 0;
        }
        // SAFETY: as above.
        let ret = unsafe { real::sigaction(sig, act, old) };
        if ret == 0 {
            crate::lifecycle::forget_ours(i);
            // SAFETY: as above.
            unsafe { default_action(old) };
        }
        return ret;
    }
    // SAFETY: as above.
    unsafe { real::sigaction(sig, act, old) }
}

/// `signal`: as [`sigaction`] (glibc's `signal` does not go through the exported `sigaction`).
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn signal(
    sig: c_int,
    handler: libc::sighandler_t,
) -> libc::sighandler_t {
    if let Some(i) = crate::lifecycle::ours(sig) {
        if handler == libc::SIG_DFL {
            return libc::SIG_DFL;
        }
        // SAFETY: as above.
        let ret = unsafe { real::signal(sig, handler) };
        if ret != libc::SIG_ERR {
            crate::lifecycle::forget_ours(i);
            return libc::SIG_DFL;
        }
        return ret;
    }
    // SAFETY: as above.
    unsafe { real::signal(sig, handler) }
}

/// Before a process running as root switches to another user (nginx's workers to `nobody`),
/// its report files are opened (`trace::dropping_privileges`): that user may not create files
/// in the report directory.
fn before_uid_change(uid: libc::uid_t) {
    if uid == libc::uid_t::MAX {
        return; // -1: unchanged
    }
    if let Some(_g) = active() {
        guard::shielded(|| trace::dropping_privileges(uid));
    }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn setuid(uid: libc::uid_t) -> c_int {
    before_uid_change(uid);
    // SAFETY: as above.
    unsafe { real::setuid(uid) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn setreuid(r: libc::uid_t, e: libc::uid_t) -> c_int {
    before_uid_change(if e == libc::uid_t::MAX { r } else { e });
    // SAFETY: as above.
    unsafe { real::setreuid(r, e) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C-unwind" fn setresuid(r: libc::uid_t, e: libc::uid_t, s: libc::uid_t) -> c_int {
    before_uid_change(if e == libc::uid_t::MAX { r } else { e });
    // SAFETY: as above.
    unsafe { real::setresuid(r, e, s) }
}

/// `_exit` skips `atexit` handlers: write the report first.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn _exit(code: c_int) -> ! {
    crate::stack::exiting("_exit");
    if let Some(_g) = active() {
        guard::shielded(|| {
            account().count(Call::Exit);
            trace::finish("_exit");
        });
    }
    real::exit_now(code)
}

/// `_Exit` is `_exit` under another name.
#[allow(non_snake_case)]
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn _Exit(code: c_int) -> ! {
    _exit(code)
}
