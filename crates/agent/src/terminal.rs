//! Terminals for processes run with a tty (Docker's `-t`): a pty pair from
//! the container's own devpts instance, so the process sees `/dev/pts/N`
//! inside its root, and the window size the host asks for.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;

use proto::TerminalSize;

/// The controlling side the agent keeps, and the side the process gets.
pub struct Pty {
    pub master: File,
    pub slave: File,
}

/// Opens a pty pair in the devpts mounted at `pts` and sets its size.
pub fn open(pts: &str, size: TerminalSize) -> io::Result<Pty> {
    let master = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(format!("{pts}/ptmx"))?;
    let unlock: libc::c_int = 0;
    let mut number: libc::c_uint = 0;
    // SAFETY: both ioctls take a pointer to an int that outlives the call.
    unsafe {
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) != 0
            || libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut number) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    let slave = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(format!("{pts}/{number}"))?;
    resize(&master, size)?;
    Ok(Pty { master, slave })
}

/// Sets the terminal's window size (the process gets SIGWINCH).
pub fn resize(master: &File, size: TerminalSize) -> io::Result<()> {
    let winsize = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize that outlives the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &winsize) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
