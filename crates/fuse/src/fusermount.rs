//! Mounting without privileges through the setuid `fusermount3` helper, as libfuse does: it
//! mounts and hands the /dev/fuse descriptor back over a socket pair (SCM_RIGHTS), and the
//! session runs on that descriptor. Only root may call mount(2) for a FUSE file system.

use std::io::{Error, ErrorKind};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};

/// Mounts `dir` with `options` (comma-separated, as fusermount3 -o takes them) and returns
/// the session descriptor.
pub fn mount(dir: &Path, options: &str) -> std::io::Result<OwnedFd> {
    let (ours, theirs) = UnixStream::pair()?;
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-o")
        .arg(options)
        .arg("--")
        .arg(dir)
        .env("_FUSE_COMMFD", theirs_fd.to_string());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: fcntl(2) is async-signal-safe; the helper must inherit its end of the pair.
        unsafe {
            cmd.pre_exec(move || {
                let flags = libc::fcntl(theirs_fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(theirs_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::new(e.kind(), format!("cannot run fusermount3: {e}")))?;
    drop(theirs);
    let received = receive_fd(&ours);
    drop(ours);
    let out = child.wait_with_output()?;
    match received {
        Ok(fd) => Ok(fd),
        Err(e) => {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
            Err(Error::new(
                ErrorKind::PermissionDenied,
                if why.is_empty() { e.to_string() } else { why },
            ))
        }
    }
}

fn receive_fd(sock: &UnixStream) -> std::io::Result<OwnedFd> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let got = loop {
        match rustix::net::recvmsg(sock, &mut iov, &mut cmsg, RecvFlags::empty()) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r?,
        }
    };
    if got.bytes == 0 {
        return Err(Error::new(ErrorKind::UnexpectedEof, "fusermount3 sent nothing"));
    }
    for msg in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg {
            if let Some(fd) = fds.next() {
                return Ok(fd);
            }
        }
    }
    Err(Error::new(
        ErrorKind::InvalidData,
        "fusermount3 sent no descriptor",
    ))
}

/// Unmounts a mount made this way.
pub fn unmount(dir: &Path) -> std::io::Result<()> {
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg("--")
        .arg(dir)
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(Error::other(format!("fusermount3 -u {} failed", dir.display())))
    }
}
