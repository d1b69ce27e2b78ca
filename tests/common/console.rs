//! A shell on a guest's serial console (a unix socket or libvirt's TCP port).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A shell on the guest's serial console.
pub struct Console {
    stream: Box<dyn Stream>,
    pending: String,
    marker: u32,
}

impl Console {
    pub fn unix(s: UnixStream) -> Console {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Console {
            stream: Box::new(s),
            pending: String::new(),
            marker: 0,
        }
    }

    /// Connect to a console on a TCP port (libvirt's `<serial type='tcp'>`).
    pub fn tcp(addr: &str, timeout: Duration) -> Result<Console, String> {
        let end = Instant::now() + timeout;
        loop {
            match std::net::TcpStream::connect(addr) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    return Ok(Console {
                        stream: Box::new(s),
                        pending: String::new(),
                        marker: 0,
                    });
                }
                Err(e) if Instant::now() >= end => {
                    return Err(format!(
                        "cannot connect to the guest console at {addr}: {e}"
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Read until `needle`; return what came before it. `alive` reports a
    /// dead guest early.
    pub fn wait_for(
        &mut self,
        needle: &str,
        timeout: Duration,
        alive: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<String, String> {
        let end = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(i) = self.pending.find(needle) {
                let out = self.pending[..i].to_string();
                self.pending.drain(..i + needle.len());
                return Ok(out);
            }
            if Instant::now() >= end {
                return Err(format!(
                    "timed out waiting for {needle:?}; console so far: {:?}",
                    self.pending
                ));
            }
            alive()?;
            match self.stream.read(&mut buf) {
                Ok(0) => std::thread::sleep(Duration::from_millis(50)),
                Ok(n) => self.pending.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => {}
            }
        }
    }

    /// Type `text` without waiting for anything.
    pub fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).unwrap();
    }

    /// Run a shell command in the guest and return what it printed.
    pub fn sh(&mut self, cmd: &str) -> String {
        self.marker += 1;
        let m = format!("XFT-DONE-{}", self.marker);
        // The marker is split in the command line so only the echo matches.
        let line = format!("{cmd}; echo XFT-DONE-\"{}\"\n", self.marker);
        self.stream.write_all(line.as_bytes()).unwrap();
        self.wait_for(&m, Duration::from_secs(120), &mut || Ok(()))
            .unwrap_or_else(|e| panic!("guest command {cmd:?}: {e}"))
    }

    /// What `cmd` printed, without the echoed command line: the text
    /// after a begin marker the guest prints (the echo of the command line
    /// has the marker split by quotes, and may be wrapped).
    pub fn output(&mut self, cmd: &str) -> String {
        let n = self.marker + 1;
        let all = self.sh(&format!("echo XFT-BEGIN-\"{n}\"; {cmd}"));
        let begin = format!("XFT-BEGIN-{n}");
        let after = all
            .rfind(&begin)
            .and_then(|i| all[i..].find('\n').map(|j| i + j + 1))
            .unwrap_or_else(|| panic!("no {begin} in the output of {cmd:?}: {all:?}"));
        all[after..].replace('\r', "")
    }
}
