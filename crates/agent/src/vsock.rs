//! The agent's vsock connection to the host.

use std::fs::File;
use std::io;
use std::os::unix::io::FromRawFd;
use std::time::Duration;

const VMADDR_CID_HOST: u32 = 2;

/// Connects to host port `port`, retrying while the device comes up.
pub fn connect_host(port: u32) -> io::Result<File> {
    let mut last = io::Error::other("no attempt");
    for _ in 0..100 {
        match try_connect(port) {
            Ok(file) => return Ok(file),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(last)
}

/// A new vsock stream socket and the address (`cid`, `port`) to use it with.
fn socket(cid: u32, port: u32) -> io::Result<(File, libc::sockaddr_vm)> {
    // SAFETY: plain socket(2); the fd is owned by the File below.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let file = unsafe { File::from_raw_fd(fd) };
    let addr = libc::sockaddr_vm {
        svm_family: libc::AF_VSOCK as libc::sa_family_t,
        svm_reserved1: 0,
        svm_port: port,
        svm_cid: cid,
        svm_zero: [0; 4],
    };
    Ok((file, addr))
}

/// <linux/vm_sockets.h>: SO_VM_SOCKETS_CONNECT_TIMEOUT (the timeval form).
const SO_VM_SOCKETS_CONNECT_TIMEOUT: libc::c_int = 6;
const CONNECT_TIMEOUT_SECS: libc::time_t = 30;

fn try_connect(port: u32) -> io::Result<File> {
    use std::os::unix::io::AsRawFd;
    let (file, addr) = socket(VMADDR_CID_HOST, port)?;
    let fd = file.as_raw_fd();
    // A host busy starting many VMs may answer after the kernel's 2 s: a
    // connect that gives up leaves the host a connection nobody speaks on.
    let timeout = libc::timeval {
        tv_sec: CONNECT_TIMEOUT_SECS,
        tv_usec: 0,
    };
    // SAFETY: a timeval of the size given, for the duration of the call.
    unsafe {
        libc::setsockopt(
            fd,
            libc::AF_VSOCK,
            SO_VM_SOCKETS_CONNECT_TIMEOUT,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    // SAFETY: addr is a valid sockaddr_vm of the given size.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// A listening vsock socket on `port` of this guest, for connections the
/// host opens (through the VMM's `CONNECT port`).
pub fn listen(port: u32) -> io::Result<File> {
    use std::os::unix::io::AsRawFd;
    let (file, addr) = socket(libc::VMADDR_CID_ANY, port)?;
    let fd = file.as_raw_fd();
    // SAFETY: addr is a valid sockaddr_vm of the given size; fd is ours.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as u32,
        )
    };
    // SAFETY: listen(2) on our own socket.
    if rc != 0 || unsafe { libc::listen(fd, 16) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// The next connection on a socket from `listen`.
pub fn accept(listener: &File) -> io::Result<File> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: accept4(2) on our listening socket; no address wanted.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd from accept4 that we own.
    Ok(unsafe { File::from_raw_fd(fd) })
}
