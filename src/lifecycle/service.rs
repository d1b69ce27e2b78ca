//! `xftrace watch --all`: the host's one watch service. It follows every
//! enrolled domain of a libvirt connection as domains start, stop, migrate
//! in and out (libvirt's lifecycle events, [`crate::libvirt::events`]; the
//! domain list is read again on each event, and at least every
//! [`RECONCILE`] in case one was missed or events are unavailable), checks
//! each running one at its interval ([`crate::detect::Rounds`]: each
//! finding reported once), and starts the tracing the hook would start
//! ([`hook::begin_tracing`]: always-on monitoring, a session a restore or
//! a migration brought along) as processes of its own, so that they belong
//! to the service (its cgroup under systemd). While it runs, the hook
//! leaves that to it (`statedir::service_running`).
//!
//! One domain never stops the others: what cannot be done for one is an
//! [`Event::Failed`] for it, and the loop goes on. Only a stop signal ends
//! the service; it then switches off the tracing it started, writing each
//! trace into that domain's state directory, and stops any `xftrace on`
//! still waiting for a guest kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use log::info;

/// The log target of what the service does (following libvirt, a domain
/// followed or left, tracing started or switched off): shown at `info`
/// even at the default verbosity, so that the journal of
/// `xftrace-watch.service` tells its story; a check's own `info` lines,
/// every round, stay behind `-v`.
pub const LOG_TARGET: &str = "xftrace::service";

use crate::base::error::{Error, Result};
use crate::detect::{CheckOptions, Finding, Rounds};
use crate::host::signals;
use crate::host::statedir::{self, now_unix};
use crate::kernel::target::Target;
use crate::libvirt::connection::Libvirt;
use crate::libvirt::events::{Events, Wait};
use crate::trace::session;

use super::hook;

/// The domain list is read again at least this often, events or not.
pub const RECONCILE: Duration = Duration::from_secs(60);
/// A lost libvirt connection is tried again after this long.
const RESUBSCRIBE: Duration = Duration::from_secs(10);
/// A domain whose checks cannot work as configured (no vmlinux, say) is
/// tried again after this long, not at every interval.
const BROKEN_RETRY: Duration = Duration::from_secs(300);

pub struct ServiceOptions {
    pub uri: String,
    /// Between the start of one check of a domain and the next.
    pub interval: Duration,
    pub check: CheckOptions,
}

/// What the service did or met, for the command line to print.
pub enum Event<'a> {
    /// A running enrolled domain is followed from now on.
    Following { domain: &'a str },
    /// A domain no longer runs here (stopped, migrated away, unenrolled).
    Left { domain: &'a str },
    /// Tracing began: the `xftrace on` the service started for it.
    Tracing { domain: &'a str, pid: u32 },
    /// A check round of a domain: its new findings.
    Round {
        domain: &'a str,
        target: &'a Target,
        new: &'a [Finding],
    },
    /// What could not be done, for a domain or (None) for the host.
    Failed {
        domain: Option<&'a str>,
        error: &'a Error,
    },
    /// At exit: the tracing it started, switched off, its trace written.
    Stopped {
        domain: &'a str,
        result: &'a Result<PathBuf>,
    },
}

struct Follower {
    target: Target,
    rounds: Rounds,
    due: Instant,
}

struct Service<'a> {
    root: &'a Path,
    opts: &'a ServiceOptions,
    make_target: &'a dyn Fn(&str) -> Target,
    report: &'a mut dyn FnMut(Event),
    follow: BTreeMap<String, Follower>,
    /// Domains whose tracing this service started.
    owned: BTreeSet<String>,
    /// The `xftrace on` processes it started, until they exit.
    starting: Vec<(String, Child)>,
    /// Domains whose definition could not be read, reported once.
    unreadable: BTreeSet<String>,
}

/// Run the service until a stop signal. An error only if it cannot start
/// (another runs for this state directory).
pub fn run(
    root: &Path,
    opts: &ServiceOptions,
    make_target: &dyn Fn(&str) -> Target,
    report: &mut dyn FnMut(Event),
) -> Result<()> {
    let _lock = statedir::service_lock(root)?.ok_or_else(|| {
        Error::State(format!(
            "another `xftrace watch --all` runs with the state directory {} (one per host: `systemctl status xftrace-watch`)",
            root.display()
        ))
    })?;
    let mut s = Service {
        root,
        opts,
        make_target,
        report,
        follow: BTreeMap::new(),
        owned: BTreeSet::new(),
        starting: Vec::new(),
        unreadable: BTreeSet::new(),
    };
    s.run_loop();
    s.shut_down();
    Ok(())
}

impl Service<'_> {
    fn run_loop(&mut self) {
        let mut events: Option<Events> = None;
        let mut subscribe_at = Instant::now();
        let mut reconcile_at = Instant::now();
        while signals::caught().is_none() {
            self.reap();
            let now = Instant::now();
            if events.is_none() && now >= subscribe_at {
                match Events::subscribe(&self.opts.uri) {
                    Ok(e) => {
                        info!(target: LOG_TARGET, "following libvirt's domain events at {}", self.opts.uri);
                        events = Some(e);
                        reconcile_at = now;
                    }
                    Err(e) => {
                        (self.report)(Event::Failed {
                            domain: None,
                            error: &e,
                        });
                        subscribe_at = now + RESUBSCRIBE;
                    }
                }
            }
            if Instant::now() >= reconcile_at {
                self.reconcile();
                // Without events, the list is polled at the check interval.
                let every = if events.is_some() {
                    RECONCILE
                } else {
                    self.opts.interval.max(Duration::from_secs(5))
                };
                reconcile_at = Instant::now() + every;
            }
            if !self.rounds() {
                return;
            }
            // Wait for the next round, a reconcile, or an event.
            let mut next = reconcile_at;
            if let Some(f) = self.follow.values().map(|f| f.due).min() {
                next = next.min(f);
            }
            if events.is_none() {
                next = next.min(subscribe_at);
            }
            loop {
                if signals::caught().is_some() {
                    return;
                }
                let left = next.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let slice = left.min(Duration::from_millis(250));
                match &events {
                    Some(ev) => match ev.wait(slice) {
                        Wait::Event => {
                            reconcile_at = Instant::now();
                            break;
                        }
                        Wait::Closed => {
                            let e = Error::Libvirt(format!(
                                "the connection to libvirt at {} closed (libvirtd stopped or restarted?); reconnecting",
                                self.opts.uri
                            ));
                            (self.report)(Event::Failed {
                                domain: None,
                                error: &e,
                            });
                            events = None;
                            subscribe_at = Instant::now() + RESUBSCRIBE;
                            reconcile_at = subscribe_at;
                            break;
                        }
                        Wait::Timeout => {}
                    },
                    None => std::thread::sleep(slice),
                }
            }
        }
    }

    /// Forget the `xftrace on` processes that have exited.
    fn reap(&mut self) {
        self.starting
            .retain_mut(|(_, c)| matches!(c.try_wait(), Ok(None)));
    }

    /// Follow the running enrolled domains, and only them.
    fn reconcile(&mut self) {
        let rows = match Libvirt::connect(&self.opts.uri).and_then(|l| l.list()) {
            Ok(r) => r,
            Err(e) => {
                (self.report)(Event::Failed {
                    domain: None,
                    error: &e,
                });
                return;
            }
        };
        let wanted: BTreeMap<&str, &crate::libvirt::connection::DomainRow> = rows
            .iter()
            .filter(|d| d.running && (d.enrolled || d.problem.is_some()))
            .map(|d| (d.name.as_str(), d))
            .collect();
        let gone: Vec<String> = self
            .follow
            .keys()
            .filter(|n| !wanted.contains_key(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.follow.remove(&name);
            // Its collector ends with the guest (the hook also stops it).
            self.owned.remove(&name);
            (self.report)(Event::Left { domain: &name });
        }
        self.unreadable.retain(|n| wanted.contains_key(n.as_str()));
        for (name, row) in wanted {
            if self.follow.contains_key(name) {
                continue;
            }
            if let Some(why) = &row.problem {
                if self.unreadable.insert(name.to_string()) {
                    let e = Error::Libvirt(format!(
                        "cannot read its definition: {}",
                        crate::base::escape::escape(why)
                    ));
                    (self.report)(Event::Failed {
                        domain: Some(name),
                        error: &e,
                    });
                }
                continue;
            }
            let target = (self.make_target)(name);
            (self.report)(Event::Following { domain: name });
            self.begin_tracing(name, &target);
            self.follow.insert(
                name.to_string(),
                Follower {
                    target,
                    rounds: Rounds::new(),
                    due: Instant::now(),
                },
            );
        }
    }

    /// Start what the hook would have started for this domain, unless a
    /// collector already reads it.
    fn begin_tracing(&mut self, name: &str, target: &Target) {
        let r = (|| {
            let dir = target.dir()?;
            if dir.collector_running()? {
                return Ok(None);
            }
            let (_, facts) = Libvirt::connect(&self.opts.uri)?.running_facts(name)?;
            hook::begin_tracing(self.root, &dir, name, &facts)
        })();
        match r {
            Ok(Some(child)) => {
                (self.report)(Event::Tracing {
                    domain: name,
                    pid: child.id(),
                });
                self.owned.insert(name.to_string());
                self.starting.push((name.to_string(), child));
            }
            Ok(None) => {}
            Err(e) => (self.report)(Event::Failed {
                domain: Some(name),
                error: &e,
            }),
        }
    }

    /// Check every domain whose round is due. False once a stop signal
    /// cut a round short.
    fn rounds(&mut self) -> bool {
        let interval = self.opts.interval;
        for (name, f) in self.follow.iter_mut() {
            if f.due > Instant::now() {
                continue;
            }
            if signals::caught().is_some() {
                return false;
            }
            let started = Instant::now();
            let (new, end) = f.rounds.round(&f.target, &self.opts.check);
            f.due = started + interval;
            match end {
                Some(Error::Interrupted { .. }) => {
                    (self.report)(Event::Round {
                        domain: name,
                        target: &f.target,
                        new: &new,
                    });
                    return false;
                }
                // A check that cannot work as configured (no vmlinux for
                // its build, say): said, and tried again much later.
                Some(e) => {
                    (self.report)(Event::Failed {
                        domain: Some(name),
                        error: &e,
                    });
                    f.due = started + interval.max(BROKEN_RETRY);
                }
                None => (self.report)(Event::Round {
                    domain: name,
                    target: &f.target,
                    new: &new,
                }),
            }
        }
        true
    }

    /// Stop what the service started: `xftrace on` processes still
    /// waiting, and the tracing it began (switched off, each trace written
    /// to its domain's state directory), all domains at once.
    fn shut_down(&mut self) {
        for (name, c) in &mut self.starting {
            info!(target: LOG_TARGET, "stopping the xftrace on still starting the tracing of {name}");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for (_, c) in &mut self.starting {
            let _ = c.wait();
        }
        let owned: Vec<(&String, &Follower)> = self
            .follow
            .iter()
            .filter(|(n, _)| self.owned.contains(*n))
            .collect();
        let results: Vec<(String, Result<PathBuf>)> = std::thread::scope(|s| {
            let handles: Vec<_> = owned
                .iter()
                .map(|(name, f)| {
                    s.spawn(move || {
                        let r = (|| {
                            let dir = f.target.dir()?;
                            if !dir.collector_running()? {
                                return Err(Error::State(
                                    "its collector had already stopped".into(),
                                ));
                            }
                            let out = dir
                                .path()
                                .join(format!("trace_graph.{}.txt", now_unix() as u64));
                            session::off(&f.target, &out).result
                        })();
                        (name.to_string(), r)
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for (name, r) in &results {
            (self.report)(Event::Stopped {
                domain: name,
                result: r,
            });
        }
    }
}
