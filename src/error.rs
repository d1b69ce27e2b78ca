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
    /// A guest physical range that is not RAM in this layout.
    OutOfRange {
        gpa: u64,
        len: u64,
    },
    Unaligned(u64),
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
            Error::NotGuestRam(_)
            | Error::Guest(_)
            | Error::Decoy(_)
            | Error::OutOfRange { .. }
            | Error::Unaligned(_) => exit::GUEST,
            Error::State(_) => exit::STATE,
            Error::Timeout(_) => exit::TIMEOUT,
            Error::Io { .. } => exit::IO,
            Error::Libvirt(_) => exit::LIBVIRT,
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
            Error::OutOfRange { gpa, len } => write!(
                f,
                "guest physical range {gpa:#x}+{len:#x} is not RAM in this memory layout \
                 (wrong --machine or RAM file?)"
            ),
            Error::Unaligned(gpa) => write!(f, "unaligned 8-byte access at {gpa:#x}"),
            Error::Io { what, source } => write!(f, "{what}: {source}"),
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
