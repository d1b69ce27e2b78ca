//! Key Controller and Klog: fresh 64-bit keys written into the guest.
//!
//! A key is appended to the Klog file before the guest can use it, so every
//! record the guest writes names an epoch whose key the host has on disk.
//! Installing epoch `e` in guest RAM: mark key slot `e % 16` invalid, write
//! the key, write the slot's epoch, publish `cur_epoch = e` (each one
//! aligned 8-byte store), then wipe every slot but those of `e` and `e − 1`:
//! a key the guest no longer needs does not stay in its memory for anyone
//! to forge records with. The guest takes a key only from a slot whose
//! epoch word equals the published epoch before and after reading the key.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::abi;
use crate::base::error::{Error, Result};
use crate::guest::memory::GuestRam;
use crate::kernel::locate::Control;

/// Epochs the collector keeps in memory: records older than the previous
/// epoch are stale once read anyway (see [`crate::trace::rings`]).
const KEEP_IN_MEMORY: usize = 64;
/// Enough of a Klog's end to hold its newest lines.
const TAIL: u64 = 64 << 10;

/// Keys handed to the guest, by epoch.
#[derive(Default, Clone, Debug)]
pub struct Klog {
    keys: BTreeMap<u64, u64>,
}

impl Klog {
    pub fn key(&self, epoch: u64) -> Option<u64> {
        self.keys.get(&epoch).copied()
    }

    pub fn insert(&mut self, epoch: u64, key: u64) {
        self.keys.insert(epoch, key);
    }

    /// The newest epoch logged (0 if none).
    pub fn max_epoch(&self) -> u64 {
        self.keys.keys().next_back().copied().unwrap_or(0)
    }

    /// Forget all but the newest `n` epochs.
    fn keep_newest(&mut self, n: usize) {
        while self.keys.len() > n {
            self.keys.pop_first();
        }
    }

    fn parse_lines(text: &str) -> Self {
        let mut k = Klog::default();
        for line in text.lines() {
            let mut it = line.split_whitespace().skip(1);
            let (Some(e), Some(key), None) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if let (Ok(e), Ok(key)) = (e.parse(), u64::from_str_radix(key, 16)) {
                k.insert(e, key);
            }
        }
        k
    }

    /// The newest entries of a Klog file (`TIME_NS EPOCH KEY_HEX` per line):
    /// enough to continue its epochs or check the guest's current key,
    /// however long the file has grown.
    pub fn load_tail(path: &Path) -> Result<Self> {
        let text = crate::host::files::read_tail(path, TAIL)
            .ok_or_else(|| Error::Input(format!("cannot read Klog {}", path.display())))?;
        // The first line may be cut; parse_lines skips what does not parse.
        let mut k = Self::parse_lines(&text);
        k.keep_newest(KEEP_IN_MEMORY);
        Ok(k)
    }
}

pub struct KeyController {
    epoch: u64,
    klog: Klog,
    file: File,
    path: PathBuf,
}

fn random_key() -> Result<u64> {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).map_err(|e| {
        Error::io(
            "cannot get random bytes",
            std::io::Error::other(e.to_string()),
        )
    })?;
    Ok(u64::from_le_bytes(b))
}

impl KeyController {
    /// Start a Klog at `path` (mode 0600), continuing after whatever epoch
    /// the guest last saw so old records in the rings never alias new keys.
    pub fn new(ram: &GuestRam, kernel: &Control, path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io(format!("cannot create Klog {}", path.display()), e))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("cannot restrict Klog {}", path.display()), e))?;
        let mut klog = Klog::default();
        if file.metadata().map(|m| m.len() > 0).unwrap_or(false) {
            klog = Klog::load_tail(path)?;
        }
        let guest_epoch = ram.read_u64(kernel.field(abi::off::CUR_EPOCH))?;
        let epoch = klog.max_epoch().max(guest_epoch);
        if epoch >= abi::EPOCH_INVALID.saturating_sub(1 << 32) {
            return Err(Error::Guest(format!(
                "the guest's key epoch is {epoch:#x}; someone other than xftrace wrote it"
            )));
        }
        Ok(KeyController {
            epoch,
            klog,
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn klog(&self) -> &Klog {
        &self.klog
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Generate a new key, log it, install it in the guest and wipe the
    /// keys it no longer needs.
    pub fn rotate(&mut self, ram: &GuestRam, kernel: &Control) -> Result<u64> {
        let key = random_key()?;
        let epoch = self
            .epoch
            .checked_add(1)
            .filter(|&e| e < abi::EPOCH_INVALID)
            .ok_or_else(|| Error::Guest("key epochs exhausted".into()))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        writeln!(self.file, "{now} {epoch} {key:016x}")
            .and_then(|_| self.file.sync_data())
            .map_err(|e| Error::io(format!("cannot write Klog {}", self.path.display()), e))?;
        self.klog.insert(epoch, key);
        self.klog.keep_newest(KEEP_IN_MEMORY);
        install(ram, kernel, epoch, key)?;
        self.epoch = epoch;
        Ok(epoch)
    }

    /// The key the guest currently holds, as the host wrote it.
    pub fn current(&self) -> Option<(u64, u64)> {
        self.klog.key(self.epoch).map(|k| (self.epoch, k))
    }
}

/// Write `key` for `epoch` into the guest, publish it, and wipe every slot
/// but the ones of `epoch` and `epoch − 1` (a CPU that read `cur_epoch`
/// just before this may still be using the previous key).
pub fn install(ram: &GuestRam, kernel: &Control, epoch: u64, key: u64) -> Result<()> {
    let slot = abi::key_slot(epoch);
    ram.write_u64(kernel.field(slot), abi::EPOCH_INVALID)?;
    ram.write_u64(kernel.field(slot | 8), key)?;
    ram.write_u64(kernel.field(slot), epoch)?;
    ram.write_u64(kernel.field(abi::off::CUR_EPOCH), epoch)?;
    let previous = abi::key_slot(epoch.wrapping_sub(1));
    for i in 0..abi::KEY_SLOTS {
        let s = abi::key_slot(i);
        if s != slot && s != previous {
            ram.write_u64(kernel.field(s), abi::EPOCH_INVALID)?;
            ram.write_u64(kernel.field(s | 8), 0)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::kernel::locate::{locate, tests::synthetic_guest};

    #[test]
    fn rotation_logs_then_publishes() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        let k = locate(&ram, &map, None).unwrap().tracer.unwrap();
        let klog = dir.path().join("klog");
        let mut kc = KeyController::new(&ram, &k, &klog).unwrap();
        let e1 = kc.rotate(&ram, &k).unwrap();
        let e2 = kc.rotate(&ram, &k).unwrap();
        assert_eq!((e1, e2), (1, 2));
        assert_eq!(ram.read_u64(k.field(abi::off::CUR_EPOCH)).unwrap(), 2);
        let slot = abi::key_slot(2);
        assert_eq!(ram.read_u64(k.field(slot)).unwrap(), 2);
        assert_eq!(
            ram.read_u64(k.field(slot + 8)).unwrap(),
            kc.current().unwrap().1
        );
        assert_ne!(kc.klog().key(1), kc.klog().key(2));
        // Klog on disk: private, and it reloads to the same keys.
        let mode = std::fs::metadata(&klog).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = Klog::load_tail(&klog).unwrap();
        assert_eq!(back.key(1), kc.klog().key(1));
        assert_eq!(back.key(2), kc.klog().key(2));
        // A new controller continues the epochs.
        let mut kc2 = KeyController::new(&ram, &k, &klog).unwrap();
        assert_eq!(kc2.rotate(&ram, &k).unwrap(), 3);
    }

    #[test]
    fn rotated_away_keys_leave_guest_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        let k = locate(&ram, &map, None).unwrap().tracer.unwrap();
        let mut kc = KeyController::new(&ram, &k, &dir.path().join("klog")).unwrap();
        for _ in 0..5 {
            kc.rotate(&ram, &k).unwrap();
        }
        let in_guest = |e: u64| {
            let s = abi::key_slot(e);
            (
                ram.read_u64(k.field(s)).unwrap(),
                ram.read_u64(k.field(s + 8)).unwrap(),
            )
        };
        assert_eq!(in_guest(5), (5, kc.klog().key(5).unwrap()));
        assert_eq!(in_guest(4), (4, kc.klog().key(4).unwrap()));
        for e in 1..=3 {
            assert_eq!(
                in_guest(e),
                (abi::EPOCH_INVALID, 0),
                "epoch {e} still readable"
            );
        }
    }

    #[test]
    fn a_long_klog_loads_only_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("klog");
        let text: String = (1..=100_000u64)
            .map(|e| format!("{} {e} {:016x}\n", 1_700_000_000_000_000_000u64 + e, e * 7))
            .collect();
        std::fs::write(&p, text).unwrap();
        let k = Klog::load_tail(&p).unwrap();
        assert_eq!(k.max_epoch(), 100_000);
        assert_eq!(k.key(100_000), Some(700_000));
        assert!(k.keys.len() <= KEEP_IN_MEMORY);
    }
}
