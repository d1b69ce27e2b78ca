//! Where log lines go: stderr, at the level `-v`/`-q` choose (`RUST_LOG`
//! still overrides it), with a timestamp on a terminal or in a file, and
//! as journald's `<priority>` prefixes under systemd, whose journal stamps
//! lines itself.

use std::io::Write;
use std::os::fd::AsFd;

/// Set up `log` for this process.
pub fn init(level: log::LevelFilter) {
    let mut b = env_logger::Builder::new();
    b.filter_level(level);
    // What the watch service does is told at the default verbosity.
    if level == log::LevelFilter::Warn {
        b.filter_module(
            crate::lifecycle::service::LOG_TARGET,
            log::LevelFilter::Info,
        );
    }
    b.parse_default_env();
    if to_journal() {
        b.format(|buf, r| writeln!(buf, "<{}>{}: {}", priority(r.level()), r.target(), r.args()));
    } else {
        b.format_timestamp_millis();
    }
    b.init();
}

/// sd-daemon(3)'s priority of a log level.
fn priority(l: log::Level) -> u8 {
    match l {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Is stderr the journal? systemd says so in `JOURNAL_STREAM` (the
/// device and inode of the stream it connected), which a child whose
/// stderr was redirected inherits: only a match counts.
fn to_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    v.to_str() == Some(&format!("{}:{}", st.st_dev, st.st_ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_priorities_are_sd_daemons() {
        assert_eq!(priority(log::Level::Error), 3);
        assert_eq!(priority(log::Level::Warn), 4);
        assert_eq!(priority(log::Level::Info), 6);
        assert_eq!(priority(log::Level::Trace), 7);
    }
}
