//! Stop requests: SIGINT (Ctrl-C), SIGTERM (`systemctl stop`, `kill`) and
//! SIGHUP (a closed terminal) alike. A command that switches the guest's
//! tracer on catches them, so that it can switch the tracer off before it
//! exits and say that it was interrupted; its waits end early when one
//! arrives ([`sleep`]).

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

use crate::base::error::{Error, Result};

/// The first stop signal caught, 0 while none.
static CAUGHT: AtomicI32 = AtomicI32::new(0);

/// The signals that ask a command to stop.
const STOPS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

extern "C" fn on_stop(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    let _ = CAUGHT.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
}

/// From now on, a stop signal is noted instead of ending the process.
pub fn catch_stops() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_stop),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in STOPS {
        // SAFETY: the handler only stores into an atomic.
        unsafe { sigaction(sig, &action) }
            .map_err(|e| Error::io("cannot install a signal handler", e.into()))?;
    }
    Ok(())
}

/// The stop signal caught so far, if any.
pub fn caught() -> Option<i32> {
    match CAUGHT.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// [`Error::Interrupted`] if a stop signal was caught: `what` says what is
/// left undone ("no baseline was saved").
pub fn check(what: &str) -> Result<()> {
    match caught() {
        Some(signal) => Err(Error::Interrupted {
            signal,
            what: what.into(),
        }),
        None => Ok(()),
    }
}

/// Sleep for `d`, or until a stop signal is caught: false if one was.
pub fn sleep(d: Duration) -> bool {
    let end = Instant::now().checked_add(d);
    loop {
        if caught().is_some() {
            return false;
        }
        let left = match end {
            Some(end) => end.saturating_duration_since(Instant::now()),
            None => Duration::from_millis(50),
        };
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_signal_is_noted_and_ends_a_sleep() {
        catch_stops().unwrap();
        assert!(sleep(Duration::from_millis(10)));
        let t = Instant::now();
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            nix::sys::signal::raise(Signal::SIGHUP).unwrap();
        });
        assert!(!sleep(Duration::from_secs(30)));
        assert!(t.elapsed() < Duration::from_secs(20));
        assert_eq!(caught(), Some(libc::SIGHUP));
        assert!(matches!(
            check("nothing saved"),
            Err(Error::Interrupted {
                signal: libc::SIGHUP,
                ..
            })
        ));
        // No other test of this binary catches signals; leave none noted.
        CAUGHT.store(0, Ordering::SeqCst);
    }
}
