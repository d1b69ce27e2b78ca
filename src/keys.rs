//! Key Controller and Klog: fresh 64-bit keys written into the guest.
//!
//! A key is appended to the Klog file before the guest can use it, so every
//! record the guest writes names an epoch whose key the host has on disk.
//! Installing epoch `e` in guest RAM: mark key slot `e % 16` invalid, write
//! the key, write the slot's epoch, then publish `cur_epoch = e` (each one
//! aligned 8-byte store). The guest takes a key only from a slot whose epoch
//! word equals the published epoch before and after reading the key.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::abi;
use crate::error::{Error, Result};
use crate::guest_memory::GuestRam;
use crate::kernel::GuestKernel;

/// Every key handed to the guest, by epoch.
#[derive(Default, Clone, Debug)]
pub struct Klog {
    keys: HashMap<u64, u64>,
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
        self.keys.keys().copied().max().unwrap_or(0)
    }

    /// Read a Klog file (`TIME_NS EPOCH KEY_HEX` per line).
    pub fn load(path: &Path) -> Result<Self> {
        let f = File::open(path)
            .map_err(|e| Error::io(format!("cannot open Klog {}", path.display()), e))?;
        let mut k = Klog::default();
        for line in BufReader::new(f).lines() {
            let line = line.map_err(|e| Error::io("cannot read Klog", e))?;
            let mut it = line.split_whitespace().skip(1);
            let (Some(e), Some(key)) = (it.next(), it.next()) else {
                continue;
            };
            if let (Ok(e), Ok(key)) = (e.parse(), u64::from_str_radix(key, 16)) {
                k.insert(e, key);
            }
        }
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
    pub fn new(ram: &GuestRam, kernel: &GuestKernel, path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(format!("cannot create Klog {}", path.display()), e))?;
        let mut klog = Klog::default();
        if path.metadata().map(|m| m.len() > 0).unwrap_or(false) {
            klog = Klog::load(path)?;
        }
        let guest_epoch = ram.read_u64(kernel.field(abi::off::CUR_EPOCH))?;
        let epoch = klog
            .keys
            .keys()
            .copied()
            .max()
            .unwrap_or(0)
            .max(guest_epoch);
        if epoch >= abi::EPOCH_INVALID - 1 {
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

    /// Generate a new key, log it, and install it in the guest.
    pub fn rotate(&mut self, ram: &GuestRam, kernel: &GuestKernel) -> Result<u64> {
        let key = random_key()?;
        let epoch = self.epoch + 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        writeln!(self.file, "{now} {epoch} {key:016x}")
            .and_then(|_| self.file.sync_data())
            .map_err(|e| Error::io(format!("cannot write Klog {}", self.path.display()), e))?;
        self.klog.insert(epoch, key);
        install(ram, kernel, epoch, key)?;
        self.epoch = epoch;
        Ok(epoch)
    }

    /// The key the guest currently holds, as the host wrote it.
    pub fn current(&self) -> Option<(u64, u64)> {
        self.klog.key(self.epoch).map(|k| (self.epoch, k))
    }
}

/// Write `key` for `epoch` into the guest and publish it.
pub fn install(ram: &GuestRam, kernel: &GuestKernel, epoch: u64, key: u64) -> Result<()> {
    let slot = abi::off::KEYS + (epoch % abi::KEY_SLOTS) * 16;
    ram.write_u64(kernel.field(slot), abi::EPOCH_INVALID)?;
    ram.write_u64(kernel.field(slot + 8), key)?;
    ram.write_u64(kernel.field(slot), epoch)?;
    ram.write_u64(kernel.field(abi::off::CUR_EPOCH), epoch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{locate, tests::synthetic_guest};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn rotation_logs_then_publishes() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, map) = synthetic_guest(dir.path());
        let k = locate(&ram, &map, None).unwrap();
        let klog = dir.path().join("klog");
        let mut kc = KeyController::new(&ram, &k, &klog).unwrap();
        let e1 = kc.rotate(&ram, &k).unwrap();
        let e2 = kc.rotate(&ram, &k).unwrap();
        assert_eq!((e1, e2), (1, 2));
        assert_eq!(ram.read_u64(k.field(abi::off::CUR_EPOCH)).unwrap(), 2);
        let slot = abi::off::KEYS + 2 * 16;
        assert_eq!(ram.read_u64(k.field(slot)).unwrap(), 2);
        assert_eq!(
            ram.read_u64(k.field(slot + 8)).unwrap(),
            kc.current().unwrap().1
        );
        assert_ne!(kc.klog().key(1), kc.klog().key(2));
        // Klog on disk: private, and it reloads to the same keys.
        let mode = std::fs::metadata(&klog).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = Klog::load(&klog).unwrap();
        assert_eq!(back.key(1), kc.klog().key(1));
        assert_eq!(back.key(2), kc.klog().key(2));
        // A new controller continues the epochs.
        let mut kc2 = KeyController::new(&ram, &k, &klog).unwrap();
        assert_eq!(kc2.rotate(&ram, &k).unwrap(), 3);
    }
}
