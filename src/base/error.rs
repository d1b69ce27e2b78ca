//! Errors, each with one line for the operator and a distinct exit code.

use std::fmt;
use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Exit codes. 0 is success; 2 is a command-line usage error (clap's).
pub mod exit {
    pub const USAGE: i32 = 2;
    pub const INPUT: i32 = 3;
    pub const GUEST: i32 = 4;
    pub const STATE: i32 = 5;
    pub const TIMEOUT: i32 = 6;
    pub const IO: i32 = 7;
    pub const LIBVIRT: i32 = 8;
}

#[derive(Debug)]
pub enum Error {
    /// An input file or argument is unusable (System.map, function names).
    Input(String),
    /// The file given as guest RAM is not one.
    NotGuestRam(String),
    /// The guest is not running an xftrace kernel, or not this one.
    Guest(String),
    /// More than one control block passes validation: someone in the guest
    /// planted a copy. Checks still run against each; commands are refused.
    Decoy(String),
    /// A read (or write) of guest memory that failed.
    Read(ReadError),
    /// The request conflicts with xftrace's own state (on twice, off without on).
    State(String),
    /// The guest did not answer in time.
    Timeout(String),
    Io {
        what: String,
        source: io::Error,
    },
    /// libvirt refused or failed a request.
    Libvirt(String),
    /// A stop signal ended the command before its end: `what` says what
    /// it left undone. Exit code 128 + the signal, as a shell reports it.
    Interrupted {
        signal: i32,
        what: String,
    },
}

impl Error {
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Input(_) => exit::INPUT,
            Error::NotGuestRam(_) | Error::Guest(_) | Error::Decoy(_) | Error::Read(_) => {
                exit::GUEST
            }
            Error::State(_) => exit::STATE,
            Error::Timeout(_) => exit::TIMEOUT,
            Error::Io { .. } => exit::IO,
            Error::Libvirt(_) => exit::LIBVIRT,
            Error::Interrupted { signal, .. } => signal.saturating_add(128),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Input(m) | Error::NotGuestRam(m) | Error::Guest(m) | Error::Decoy(m) => {
                f.write_str(m)
            }
            Error::State(m) | Error::Timeout(m) | Error::Libvirt(m) => f.write_str(m),
            Error::Read(e) => e.fmt(f),
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Interrupted { signal, what } => {
                let name = nix::sys::signal::Signal::try_from(*signal)
                    .map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_string());
                write!(f, "interrupted by {name}: {what}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Which of the guest's address spaces a read was in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// Guest physical memory, through the RAM files.
    Physical,
    /// Guest virtual memory, through the kernel's page tables (or its
    /// image, read linearly).
    Virtual,
}

/// Why a read of guest memory failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFailure {
    /// The physical range is not RAM in this memory layout (or straddles
    /// two regions).
    NotRam,
    /// An 8-byte atomic access at an address that is not 8-byte aligned.
    Unaligned,
    /// The kernel's page tables do not map the virtual range.
    NotMapped,
    /// The virtual range is mapped, to something that is not RAM.
    MappedOutsideRam,
    /// The range's end does not fit in 64 bits.
    Overflow,
}

/// A read of guest memory that failed: where, how much, and why. The one
/// error of every read, physical or virtual.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadError {
    pub space: Space,
    pub addr: u64,
    pub len: u64,
    pub why: ReadFailure,
}

impl ReadError {
    pub fn physical(addr: u64, len: u64, why: ReadFailure) -> Self {
        ReadError {
            space: Space::Physical,
            addr,
            len,
            why,
        }
    }

    pub fn virtual_(addr: u64, len: u64, why: ReadFailure) -> Self {
        ReadError {
            space: Space::Virtual,
            addr,
            len,
            why,
        }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (addr, len) = (self.addr, self.len);
        match (self.space, self.why) {
            (Space::Physical, ReadFailure::NotRam) => write!(
                f,
                "guest physical range {addr:#x}+{len:#x} is not RAM in this memory layout \
                 (wrong --machine or RAM file?)"
            ),
            (_, ReadFailure::Unaligned) => write!(f, "unaligned 8-byte access at {addr:#x}"),
            (space, why) => {
                let space = match space {
                    Space::Physical => "physical",
                    Space::Virtual => "virtual",
                };
                let why = match why {
                    ReadFailure::NotRam => "not RAM",
                    ReadFailure::NotMapped => "not mapped by the kernel's page tables",
                    ReadFailure::MappedOutsideRam => "mapped to something that is not RAM",
                    ReadFailure::Overflow => "the range wraps around the address space",
                    ReadFailure::Unaligned => "unaligned",
                };
                write!(
                    f,
                    "cannot read guest {space} range {addr:#x}+{len:#x}: {why}"
                )
            }
        }
    }
}

impl From<ReadError> for Error {
    fn from(e: ReadError) -> Self {
        Error::Read(e)
    }
}
