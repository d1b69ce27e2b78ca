//! Which guest to trace, and how to open it: a RAM file given directly, or a
//! libvirt domain whose RAM files and layout come from QEMU through libvirt.

use std::path::{Path, PathBuf};

use log::info;

use crate::error::{Error, Result};
use crate::guest_memory::{GuestRam, Machine, MemoryLayout};
use crate::kernel::{locate, GuestKernel};
use crate::libvirt::Libvirt;
use crate::state::GuestState;
use crate::symbols::SystemMap;

#[derive(Clone, Debug)]
pub enum Source {
    /// `--mem-file`: plain QEMU, or any file-backed guest.
    MemFile {
        path: PathBuf,
        machine: Option<Machine>,
        max_ram_below_4g: Option<u64>,
    },
    /// `--domain`: a running libvirt domain.
    Domain { name: String, uri: String },
}

#[derive(Clone, Debug)]
pub struct Target {
    pub source: Source,
    /// Overrides the System.map recorded at enrollment.
    pub system_map: Option<PathBuf>,
    pub vmlinux: Option<PathBuf>,
}

/// A guest opened for tracing.
pub struct Guest {
    pub ram: GuestRam,
    pub map: SystemMap,
    pub kernel: GuestKernel,
    pub system_map: PathBuf,
}

fn mem_file_layout(
    path: &Path,
    machine: Option<Machine>,
    low: Option<u64>,
) -> Result<MemoryLayout> {
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("cannot open guest RAM file {}", path.display()), e))?
        .len();
    let machine = match machine {
        Some(m) => m,
        // Below 2.75 GiB both machine types keep all RAM low.
        None if size < 0xb000_0000 => Machine::Pc,
        None => {
            return Err(Error::Input(format!(
                "{} holds {} MiB of RAM, where pc and q35 lay memory out differently; pass --machine pc or --machine q35",
                path.display(),
                size >> 20
            )))
        }
    };
    Ok(MemoryLayout::x86(size, machine, low))
}

impl Target {
    fn vmlinux_for(&self, map: &Path) -> Option<PathBuf> {
        self.vmlinux.clone().or_else(|| {
            let v = map.with_file_name("vmlinux");
            v.is_file().then_some(v)
        })
    }

    pub fn open(&self) -> Result<Guest> {
        let (ram, system_map) = match &self.source {
            Source::MemFile {
                path,
                machine,
                max_ram_below_4g,
            } => {
                let map = self.system_map.clone().ok_or_else(|| {
                    Error::Input("--system-map PATH is required: the System.map of the kernel the guest runs".into())
                })?;
                let layout = mem_file_layout(path, *machine, *max_ram_below_4g)?;
                (GuestRam::open(path, layout)?, map)
            }
            Source::Domain { name, uri } => {
                let lv = Libvirt::connect(uri)?;
                let (dom, facts) = lv.running_facts(name)?;
                let map = match (&self.system_map, facts.system_map) {
                    (Some(m), _) => m.clone(),
                    (None, Some(m)) => PathBuf::from(m),
                    (None, None) => {
                        return Err(Error::Input(format!(
                            "domain {name} has no System.map on record: pass --system-map, or enroll it with `xftrace enroll {name} --system-map PATH`"
                        )))
                    }
                };
                let backing = lv.ram_backing(&dom, name)?;
                (GuestRam::open_files(&backing.paths, backing.layout)?, map)
            }
        };
        let map = SystemMap::load(&system_map)?;
        let kernel = locate(&ram, &map, self.vmlinux_for(&system_map).as_deref())?;
        info!(
            "{}: kernel at {:#x} (slide {:#x}), control block at {}: {}",
            self.describe(),
            kernel.text_pa,
            kernel.slide,
            kernel.ctl,
            kernel.banner
        );
        Ok(Guest {
            ram,
            map,
            kernel,
            system_map,
        })
    }

    pub fn state(&self, root: &Path) -> Result<GuestState> {
        match &self.source {
            Source::MemFile { path, .. } => GuestState::for_mem_file(root, path),
            Source::Domain { name, .. } => GuestState::for_domain(root, name),
        }
    }

    pub fn describe(&self) -> String {
        match &self.source {
            Source::MemFile { path, .. } => path.display().to_string(),
            Source::Domain { name, .. } => format!("domain {name}"),
        }
    }

    /// Arguments that make another xftrace process open the same target.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        match &self.source {
            Source::MemFile {
                path,
                machine,
                max_ram_below_4g,
            } => {
                a.extend(["--mem-file".into(), path.display().to_string()]);
                if let Some(m) = machine {
                    a.extend(["--machine".into(), format!("{m:?}").to_lowercase()]);
                }
                if let Some(l) = max_ram_below_4g {
                    a.extend(["--max-ram-below-4g".into(), l.to_string()]);
                }
            }
            Source::Domain { name, uri } => {
                a.extend([
                    "--domain".into(),
                    name.clone(),
                    "--connect".into(),
                    uri.clone(),
                ]);
            }
        }
        if let Some(m) = &self.system_map {
            a.extend(["--system-map".into(), m.display().to_string()]);
        }
        if let Some(v) = &self.vmlinux {
            a.extend(["--vmlinux".into(), v.display().to_string()]);
        }
        a
    }
}
