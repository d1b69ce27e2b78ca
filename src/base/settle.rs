//! Waiting for guest state caught mid-change: a check that sees something
//! wrong looks again a moment later (an object being freed, a site being
//! patched, a registry replaced under RCU), and only what still holds
//! counts. Every such wait goes through [`settle`], so that the fuzz
//! harnesses, whose guest never changes under them, can skip it: a wait per
//! input held one of them to 9 inputs a second. A release build has no
//! switch: it always waits.

use std::time::Duration;

/// Give racing guest state `d` to settle before looking again.
pub fn settle(d: Duration) {
    #[cfg(any(test, feature = "fuzzing"))]
    if SKIP.with(std::cell::Cell::get) {
        return;
    }
    std::thread::sleep(d);
}

/// How much longer to watch a guest that may only be starved of host CPU
/// (an overloaded host, a TCG guest beside others) before concluding that
/// it stands still: `d`, or nothing where settling is switched off (a
/// guest that never changes, whose stillness is already known).
pub fn patience(d: Duration) -> Duration {
    #[cfg(any(test, feature = "fuzzing"))]
    if SKIP.with(std::cell::Cell::get) {
        return Duration::ZERO;
    }
    d
}

#[cfg(any(test, feature = "fuzzing"))]
thread_local! {
    /// Per thread, so that a harness never shortens another test's wait.
    static SKIP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` with every [`settle`] of this thread returning at once: for the
/// fuzz harnesses, whose guest holds still while a check looks twice.
#[cfg(any(test, feature = "fuzzing"))]
pub fn without_settling<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SKIP.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SKIP.with(|s| s.replace(true)));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn settling_waits_unless_switched_off_on_this_thread() {
        let t = Instant::now();
        without_settling(|| settle(Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(
            without_settling(|| patience(Duration::from_secs(5))),
            Duration::ZERO
        );
        assert_eq!(patience(Duration::from_secs(5)), Duration::from_secs(5));
        // Nested, and restored after.
        without_settling(|| without_settling(|| {}));
        let t = Instant::now();
        settle(Duration::from_millis(30));
        assert!(t.elapsed() >= Duration::from_millis(30));
        // Another thread still waits while this one skips.
        without_settling(|| {
            let waited = std::thread::spawn(|| {
                let t = Instant::now();
                settle(Duration::from_millis(30));
                t.elapsed()
            })
            .join()
            .unwrap();
            assert!(waited >= Duration::from_millis(30));
        });
    }
}
