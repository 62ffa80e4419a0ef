//! A pseudo-terminal for driving the CLI as a person's terminal would: the child's stdout is
//! the terminal, and everything it draws (carriage returns and line clears included) is read
//! back raw.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

/// Runs `cmd` with its stdout on a new pseudo-terminal; returns its exit code and every
/// byte it wrote there, once it has exited.
#[allow(unsafe_code)]
pub fn run(mut cmd: Command) -> (Option<i32>, Vec<u8>) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors into the ints we pass; the other arguments
    // may be null (no name, default terminal settings and size).
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened for us and are owned by nothing else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(slave))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    // Our copy of the terminal's end went into the child; reading ends (EIO) when it exits.
    drop(cmd);
    let reader = std::thread::spawn(move || {
        let mut file = std::fs::File::from(master);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match file.read(&mut buf) {
                Ok(0) | Err(_) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    });
    let status = child.wait().expect("waits");
    (status.code(), reader.join().expect("reader"))
}

/// The frames a live view drew for `stage`'s running line: each text after a carriage return
/// that starts with `… stage`, in order.
pub fn frames(out: &[u8], stage: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(out);
    let want = format!("… {stage}");
    text.split(['\r', '\n'])
        .map(|f| f.trim_start_matches("\x1b[2K").trim().to_string())
        .filter(|f| f.starts_with(&want))
        .collect()
}
