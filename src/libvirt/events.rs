//! Domain lifecycle events from libvirt: a domain started, stopped, was
//! paused, resumed, migrated in or out. `watch --all` waits on them instead
//! of polling the domain list.
//!
//! virt 0.5 runs libvirt's default event loop (`virt::event`) but has no
//! wrapper for `virConnectDomainEventRegisterAny`, so that one call, its
//! callback and its deregistration are made here through `virt::sys`. The
//! callback only says "something happened" on a channel (at most one
//! pending: a burst of events is one reconcile); what happened is read back
//! through the ordinary API, so nothing of the event's content (a domain
//! name, say) is trusted or parsed here.

use std::os::raw::{c_int, c_void};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Once;
use std::time::Duration;

use virt::connect::Connect;
use virt::sys;

use crate::base::error::{Error, Result};

/// A connection subscribed to every domain's lifecycle events.
pub struct Events {
    conn: Connect,
    id: c_int,
    rx: Receiver<()>,
}

/// What [`Events::wait`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Wait {
    /// At least one event arrived.
    Event,
    /// None in the time given.
    Timeout,
    /// The connection is gone (libvirtd stopped or restarted): subscribe
    /// again.
    Closed,
}

static EVENT_LOOP: Once = Once::new();

/// libvirt's default event loop, on a thread of its own, registered once
/// and before the first connection (keepalives need it too).
fn event_loop() {
    EVENT_LOOP.call_once(|| {
        if virt::event::event_register_default_impl().is_err() {
            log::warn!("cannot register libvirt's event loop: no domain events (polling instead)");
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                if virt::event::event_run_default_impl().is_err() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start libvirt's event loop: {e}");
        }
    });
}

/// The lifecycle callback (`virConnectDomainEventCallback`): says that
/// something happened, without waiting.
unsafe extern "C" fn lifecycle(
    _conn: sys::virConnectPtr,
    _dom: sys::virDomainPtr,
    _event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: `opaque` is the `SyncSender` boxed by `subscribe`, freed only
    // by `free_sender` once libvirt no longer calls this callback.
    let tx = unsafe { &*(opaque as *const SyncSender<()>) };
    let _ = tx.try_send(());
    0
}

unsafe extern "C" fn free_sender(opaque: *mut c_void) {
    // SAFETY: libvirt calls this once, with the pointer `subscribe` gave it.
    drop(unsafe { Box::from_raw(opaque as *mut SyncSender<()>) });
}

impl Events {
    /// Connect to `uri` and subscribe to its domains' lifecycle events.
    pub fn subscribe(uri: &str) -> Result<Events> {
        event_loop();
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri)).map_err(|e| {
            Error::Libvirt(format!(
                "cannot connect to libvirt at {uri} for its events: {}",
                e.message()
            ))
        })?;
        // A libvirtd that dies is noticed within 15 s even with no event.
        let _ = conn.set_keep_alive(5, 3);
        let (tx, rx) = sync_channel(1);
        let opaque = Box::into_raw(Box::new(tx)) as *mut c_void;
        // SAFETY: the lifecycle callback has the signature libvirt calls
        // for VIR_DOMAIN_EVENT_ID_LIFECYCLE; the API takes it as the
        // generic type (libvirt's VIR_DOMAIN_EVENT_CALLBACK cast). The
        // connection outlives the registration (deregistered in Drop).
        let id = unsafe {
            let cb: sys::virConnectDomainEventGenericCallback = Some(std::mem::transmute::<
                unsafe extern "C" fn(
                    sys::virConnectPtr,
                    sys::virDomainPtr,
                    c_int,
                    c_int,
                    *mut c_void,
                ) -> c_int,
                unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
            >(lifecycle));
            sys::virConnectDomainEventRegisterAny(
                conn.as_ptr(),
                std::ptr::null_mut(),
                sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
                cb,
                opaque,
                Some(free_sender),
            )
        };
        if id < 0 {
            // SAFETY: not registered: libvirt will never free it.
            drop(unsafe { Box::from_raw(opaque as *mut SyncSender<()>) });
            return Err(Error::Libvirt(format!(
                "cannot subscribe to domain events at {uri}: {}",
                virt::error::Error::last_error().message()
            )));
        }
        Ok(Events { conn, id, rx })
    }

    /// Wait up to `timeout` for an event.
    pub fn wait(&self, timeout: Duration) -> Wait {
        match self.rx.recv_timeout(timeout) {
            Ok(()) => Wait::Event,
            Err(RecvTimeoutError::Timeout) if self.conn.is_alive().unwrap_or(false) => {
                Wait::Timeout
            }
            Err(_) => Wait::Closed,
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        // SAFETY: `id` was registered on this connection, which is open.
        unsafe {
            sys::virConnectDomainEventDeregisterAny(self.conn.as_ptr(), self.id);
        }
        // The connection closes when `conn` drops.
    }
}
