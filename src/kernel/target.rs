//! Which guest to trace, and how to open it: a RAM file given directly, or a
//! domain of a virtualization manager whose RAM files and layout the
//! manager reports ([`Domains`], implemented for libvirt in a layer above).

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::{debug, info, warn};

use crate::base::error::{Error, Result};
use crate::base::escape::escape;
use crate::guest::memory::{GuestRam, Machine, MemoryLayout};
use crate::guest::vcpu::VcpuRegs;
use crate::host::statedir::{now_unix, GuestDir};
use crate::kernel::btf::ModuleLayout;
use crate::kernel::builds::Reference;
use crate::kernel::guest::Guest;
use crate::kernel::locate::{self, GuestKernel, LocateOptions, Located};
use crate::kernel::modcode::ModuleFiles;
use crate::kernel::stale;
use crate::kernel::symbols::SystemMap;
use crate::kernel::vmlinux::Vmlinux;

/// A RAM file given directly (`--mem-file`), with what QEMU's memory
/// layout depends on.
#[derive(Clone, Debug)]
pub struct MemFile {
    pub path: PathBuf,
    pub machine: Option<Machine>,
    pub max_ram_below_4g: Option<u64>,
    /// The QMP socket of the QEMU that runs it, for its vCPUs' registers.
    pub qmp: Option<PathBuf>,
}

/// The guests a virtualization manager runs (libvirt's domains), as far
/// as opening one needs them. Implemented above this layer.
pub trait Domains: fmt::Debug + Send + Sync {
    /// The running domain `name` (an error if it is not running, or not
    /// all here yet).
    fn running(&self, name: &str) -> Result<Box<dyn RunningDomain>>;
    /// Is the domain known not to run here (stopped, or gone)? `false`
    /// when the manager cannot tell.
    fn known_stopped(&self, name: &str) -> bool;
    /// Does the manager know a domain `name`, running or not? An error
    /// when it cannot say.
    fn defined(&self, name: &str) -> Result<bool>;
}

/// A running domain, looked up once.
pub trait RunningDomain {
    /// The System.map its definition records (from enrollment), as written
    /// there (unchecked).
    fn system_map(&self) -> Option<String>;
    /// Its RAM files, and where they sit in guest physical memory.
    fn ram(&self) -> Result<DomainRam>;
    /// The most vCPUs it may have (the guest's possible CPUs), as its
    /// manager says: outside the guest's reach.
    fn max_vcpus(&self) -> Option<u32>;
    /// Its vCPUs' registers, as QEMU's HMP `info registers -a` prints them
    /// ([`crate::guest::vcpu`]).
    fn vcpu_registers(&self) -> Result<String>;
}

/// A domain's RAM as its manager reports it.
pub struct DomainRam {
    pub paths: Vec<PathBuf>,
    pub layout: MemoryLayout,
}

#[derive(Clone, Debug)]
pub enum Source {
    /// `--mem-file`: plain QEMU, or any file-backed guest.
    MemFile(MemFile),
    /// `--domain`: a running domain of the manager at `uri` (`--connect`).
    Domain {
        name: String,
        uri: String,
        domains: Arc<dyn Domains>,
    },
}

/// Where a guest's RAM is and which build it runs.
struct Backing {
    /// Candidate layouts (several when the machine type is unknown).
    layouts: Vec<MemoryLayout>,
    paths: Vec<PathBuf>,
    /// Paths from QEMU's monitor are not followed through links.
    follow_links: bool,
    /// None: a stock kernel, whose build is found by its banner among the
    /// stored references ([`crate::kernel::builds::references`]).
    system_map: Option<PathBuf>,
    /// The System.map came from a domain's definition (a stored build).
    recorded: bool,
    /// The most vCPUs the guest may have, where its manager says.
    max_vcpus: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct Target {
    pub source: Source,
    /// Overrides the System.map recorded at enrollment (the operator's own
    /// choice, trusted as such).
    pub system_map: Option<PathBuf>,
    pub vmlinux: Option<PathBuf>,
    /// The build's modules (`.ko` files under it), to tell them by
    /// content; default: `modules.d` beside the System.map.
    pub modules: Option<PathBuf>,
    /// xftrace's state directory (where enrolled kernel builds are kept).
    pub state_root: PathBuf,
}

/// The RAM layouts a `--mem-file` of this size can have.
fn mem_file_layouts(
    path: &Path,
    machine: Option<Machine>,
    low: Option<u64>,
) -> Result<Vec<MemoryLayout>> {
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("cannot open guest RAM file {}", path.display()), e))?
        .len();
    let machines = match machine {
        Some(m) => vec![m],
        // Below 2.75 GiB both machine types keep all RAM low.
        None if size < 0xb000_0000 => vec![Machine::Pc],
        None => vec![Machine::Pc, Machine::Q35],
    };
    Ok(machines
        .into_iter()
        .map(|m| MemoryLayout::x86(size, m, low))
        .collect())
}

/// Is the guest's own idea of where its RAM ends the one this layout has?
/// On x86-64 `max_low_pfn` ends up as `max_pfn`, the end of all RAM
/// (`init_mem_mapping()`): past 4 GiB when RAM is split around the PCI
/// hole, which pc and q35 do at different places.
fn layout_agrees(ram: &GuestRam, map: &SystemMap, k: &GuestKernel) -> bool {
    let Some(ram_end) = ram.layout().regions().last().map(|r| r.end()) else {
        return false;
    };
    match locate::max_low_pfn(ram, map, k).and_then(|p| p.checked_mul(4096)) {
        // Firmware reserves at most a few MiB at the top of low RAM.
        Some(end) => end <= ram_end && ram_end.saturating_sub(end) < (256 << 20),
        None => false,
    }
}

impl Target {
    /// The vmlinux to compare with: the operator's, or the one stored beside
    /// the System.map.
    fn vmlinux_for(&self, map: &Path, recorded: bool) -> Option<PathBuf> {
        if let Some(v) = &self.vmlinux {
            return Some(v.clone());
        }
        if recorded {
            return crate::kernel::builds::recorded_vmlinux(map);
        }
        let v = map.with_file_name("vmlinux");
        v.is_file().then_some(v)
    }

    /// The build's `.ko` files: the operator's directory, else a stored
    /// build's `modules.d` (trusted like its System.map), else the
    /// `modules.d` beside the System.map given; None where there is none.
    fn module_files_for(&self, map: &Path, recorded: bool) -> Result<Option<ModuleFiles>> {
        if let Some(d) = &self.modules {
            return ModuleFiles::scan(d, false).map(Some);
        }
        let d = map.with_file_name("modules.d");
        if std::fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()) {
            return ModuleFiles::scan(&d, recorded).map(Some);
        }
        Ok(None)
    }

    /// The guest's vCPUs' live registers, where a monitor of its QEMU is
    /// known (a domain; a `--mem-file` guest given `--qmp`); None where
    /// none is.
    pub fn vcpu_registers(&self) -> Option<std::result::Result<Vec<VcpuRegs>, String>> {
        let text = match &self.source {
            Source::MemFile(MemFile { qmp: None, .. }) => return None,
            Source::MemFile(MemFile { qmp: Some(q), .. }) => {
                crate::host::qmp::human_monitor_command(q, "info registers -a")
            }
            Source::Domain { name, domains, .. } => {
                domains.running(name).and_then(|d| d.vcpu_registers())
            }
        };
        Some(
            text.map_err(|e| e.to_string())
                .and_then(|t| crate::guest::vcpu::parse_info_registers(&t)),
        )
    }

    /// Open the guest: map its RAM, load the build, locate the kernel.
    /// With several control blocks (a decoy) this fails with
    /// [`Error::Decoy`]; [`Target::open_all`] returns them all instead.
    pub fn open(&self) -> Result<Guest> {
        let g = self.open_all()?;
        if g.others.is_empty() {
            Ok(g)
        } else {
            let mut all = vec![g.kernel.clone()];
            all.extend(g.others.iter().cloned());
            Err(locate::decoy(&Located {
                kernels: all,
                candidates: 0,
                rejected: 0,
                first_reason: None,
            }))
        }
    }

    /// Where the guest's RAM is and which build it runs.
    fn backing(&self) -> Result<Backing> {
        match &self.source {
            Source::MemFile(m) => Ok(Backing {
                layouts: mem_file_layouts(&m.path, m.machine, m.max_ram_below_4g)?,
                paths: vec![m.path.clone()],
                follow_links: true,
                system_map: self.system_map.clone(),
                recorded: false,
                max_vcpus: None,
            }),
            Source::Domain { name, domains, .. } => {
                let dom = domains.running(name)?;
                let (map, recorded) = match (&self.system_map, dom.system_map()) {
                    (Some(m), _) => (Some(m.clone()), false),
                    (None, Some(m)) => (
                        Some(crate::kernel::builds::check_recorded(
                            &self.state_root,
                            Path::new(&m),
                        )?),
                        true,
                    ),
                    // A stock kernel's domain.
                    (None, None) => (None, true),
                };
                let backing = dom.ram()?;
                Ok(Backing {
                    layouts: vec![backing.layout],
                    paths: backing.paths,
                    follow_links: false,
                    system_map: map,
                    recorded,
                    max_vcpus: dom.max_vcpus(),
                })
            }
        }
    }

    /// The trusted build: System.map, vmlinux, the banner it expects, and
    /// what it says of modules.
    fn build(&self, system_map: &Path, recorded: bool) -> Result<Build> {
        let map = SystemMap::load(system_map)?;
        let relocs = if recorded && self.vmlinux.is_none() {
            crate::kernel::builds::recorded_relocs(system_map)
        } else {
            None
        };
        let vmlinux = self
            .vmlinux_for(system_map, recorded)
            .map(|p| match &relocs {
                Some(r) => Vmlinux::load_with_relocs(&p, r),
                None => Vmlinux::load(&p),
            })
            .transpose()?;
        let banner = match (&vmlinux, map.addr("linux_banner")) {
            (Some(v), Some(a)) => Some(v.cstring(a).ok_or_else(|| {
                Error::Input(format!(
                    "the vmlinux has no linux_banner at {a:#x}; is it the vmlinux of {}?",
                    system_map.display()
                ))
            })?),
            _ => None,
        };
        let module_layout = vmlinux
            .as_ref()
            .and_then(|v| v.btf())
            .and_then(ModuleLayout::from_btf);
        let module_files = self.module_files_for(system_map, recorded)?;
        let mut build_modules = crate::kernel::builds::build_modules(system_map, recorded);
        if let Some(f) = &module_files {
            build_modules
                .get_or_insert_with(Default::default)
                .extend(f.names().map(String::from));
        }
        Ok(Build {
            system_map: system_map.to_path_buf(),
            build_modules,
            module_files,
            map,
            vmlinux,
            banner,
            module_layout,
        })
    }

    /// Open the guest keeping every control block that passes.
    pub fn open_all(&self) -> Result<Guest> {
        let b = self.backing()?;
        let Some(system_map) = &b.system_map else {
            return self.open_stock(&b);
        };
        match self.open_traced(&b, system_map) {
            // No control block anywhere this build puts one: the guest may
            // run a distribution's kernel (booted before xftrace's, or
            // instead of it).
            Err((e, true)) => match self.open_stock(&b) {
                Ok(g) => {
                    warn!(
                        "{}: runs {}, not the build on record ({}): checked as a stock kernel",
                        self.describe(),
                        escape(&g.kernel.banner),
                        system_map.display()
                    );
                    Ok(g)
                }
                Err(stock) => {
                    debug!("not a stock kernel either: {stock}");
                    Err(e)
                }
            },
            Err((e, _)) => Err(e),
            Ok(g) => Ok(g),
        }
    }

    /// Open the guest with the build `system_map` (an xftrace kernel's);
    /// on failure, also whether no control block was seen at all.
    fn open_traced(
        &self,
        b: &Backing,
        system_map: &Path,
    ) -> std::result::Result<Guest, (Error, bool)> {
        let build = self.build(system_map, b.recorded).map_err(|e| (e, false))?;
        let (map, banner) = (&build.map, build.banner.as_deref());
        let several = b.layouts.len() > 1;
        // The first layout that held no kernel, for the error if none fits
        // (explaining it scans all RAM: only then).
        let mut first_miss = None;
        let mut fits = Vec::new();
        for layout in b.layouts.clone() {
            let ram =
                GuestRam::open_files(&b.paths, layout, b.follow_links).map_err(|e| (e, false))?;
            let found = locate::locate_all(&ram, map, banner, LocateOptions::default())
                .map_err(|e| (e, false))?;
            if found.kernels.is_empty() {
                if first_miss.is_none() {
                    first_miss = Some((ram, found));
                }
                continue;
            }
            if several && !found.kernels.iter().any(|k| layout_agrees(&ram, map, k)) {
                continue;
            }
            fits.push((ram, found));
        }
        if fits.len() > 1 {
            return Err((
                Error::Input(format!(
                    "{} holds a kernel that fits both the pc and the q35 memory layout; pass --machine pc or --machine q35",
                    b.paths[0].display()
                )),
                false,
            ));
        }
        let Some((ram, found)) = fits.pop() else {
            return Err(match first_miss {
                Some((ram, found)) => {
                    let none_seen = found.candidates == 0;
                    (locate::not_found(&ram, &found), none_seen)
                }
                None => (
                    Error::Input(format!(
                        "{} fits neither the pc nor the q35 memory layout; pass --machine and, if QEMU ran with it, --max-ram-below-4g",
                        b.paths[0].display()
                    )),
                    false,
                ),
            });
        };
        let sorted = self.set_aside_stale(&ram, map, found.kernels);
        let mut kernels = sorted.live.into_iter();
        let kernel = kernels.next().expect("found at least one");
        let mut g = self
            .opened(build, b, ram, kernel, kernels.collect())
            .map_err(|e| (e, false))?;
        g.stale = sorted.stale;
        Ok(g)
    }

    /// Open a guest that runs a distribution's stock kernel: its build is
    /// the stored reference whose banner lies in its RAM where that build
    /// puts it; with none, the banners in its RAM name the packages to
    /// fetch ([`Target::fetch_reference`]).
    fn open_stock(&self, b: &Backing) -> Result<Guest> {
        let several = b.layouts.len() > 1;
        let mut fits = Vec::new();
        let mut why = None;
        for layout in b.layouts.clone() {
            let ram = GuestRam::open_files(&b.paths, layout, b.follow_links)?;
            // The stored builds whose banner lies where their kernel would;
            // none: the packages Debian banners in RAM name, fetched.
            let stored = self.stored_references_in(&ram);
            let fetched_now = stored.is_empty();
            let candidates = if fetched_now {
                self.fetch_from_banners(&ram)?
            } else {
                stored
            };
            let mut found = Vec::new();
            for r in &candidates {
                if let Some(c) = self.stock_candidate(&ram, r, several, &mut why)? {
                    found.push(c);
                }
            }
            let mut live = self.running(&ram, &found);
            // Every kernel found stands still: an earlier boot's image, left
            // in RAM by a reboot into another version whose build is not
            // stored yet (or a paused guest). Banners elsewhere say which.
            if live.is_none() && !found.is_empty() && !fetched_now {
                let mut more = Vec::new();
                for r in &self.fetch_from_banners(&ram)? {
                    if let Some(c) = self.stock_candidate(&ram, r, several, &mut why)? {
                        more.push(c);
                    }
                }
                live = self
                    .running(&ram, &more)
                    .map(|i| i.saturating_add(found.len()));
                found.extend(more);
            }
            // The running kernel, or the first found (a paused guest); the
            // others' kernels are an earlier boot's, set aside.
            let pick = live.unwrap_or(0);
            if pick < found.len() {
                let (mut sorted, build) = found.swap_remove(pick);
                for (other, _) in found {
                    sorted.stale.extend(other.live);
                    sorted.stale.extend(other.stale);
                }
                fits.push((ram, sorted, build));
            }
        }
        if fits.len() > 1 {
            return Err(Error::Input(format!(
                "{} holds a kernel that fits both the pc and the q35 memory layout; pass --machine pc or --machine q35",
                b.paths[0].display()
            )));
        }
        let Some((ram, sorted, build)) = fits.pop() else {
            return Err(Error::Guest(match why {
                Some(w) => format!(
                    "the guest holds a stock kernel's banner, but not its kernel ({w})"
                ),
                None => format!(
                    "no kernel xftrace knows in {}: no xftrace control block, and no banner of a Debian kernel (pass --system-map for a kernel built from guest-kernel/, or `xftrace add-kernel --debian RELEASE=VERSION` for a Debian kernel)",
                    b.paths[0].display()
                ),
            }));
        };
        let mut kernels = sorted.live.into_iter();
        let kernel = kernels.next().expect("found at least one");
        let mut g = self.opened(build, b, ram, kernel, kernels.collect())?;
        g.stale = sorted.stale;
        // The xftrace-dkms module, where the guest loaded it, is its tracer.
        let tracer = crate::kernel::dkms::find(&g.view(&g.kernel));
        match tracer {
            Ok(Some(c)) => {
                info!(
                    "{}: traced by the {} module (control block at {})",
                    self.describe(),
                    crate::kernel::dkms::MODULE_NAME,
                    c.ctl
                );
                g.kernel.tracer = Some(c);
            }
            Ok(None) => {}
            Err(e) => warn!(
                "{}: the guest's {} module is not a tracer xftrace can use: {e}; checked from outside only",
                self.describe(),
                crate::kernel::dkms::MODULE_NAME
            ),
        }
        Ok(g)
    }

    /// The kernels of reference `r` in `ram`, an earlier boot's copies of
    /// the same build set aside, and its build (None: none, or none that
    /// fits this memory layout when there are several to choose from).
    fn stock_candidate(
        &self,
        ram: &GuestRam,
        r: &Reference,
        several: bool,
        why: &mut Option<String>,
    ) -> Result<Option<(stale::Sorted, Build)>> {
        let build = self.build(&r.system_map, true)?;
        let found = locate::locate_stock_all(ram, &build.map, &r.banner)?;
        if found.kernels.is_empty() {
            if why.is_none() {
                *why = found.first_reason;
            }
            return Ok(None);
        }
        if several
            && !found
                .kernels
                .iter()
                .any(|k| layout_agrees(ram, &build.map, k))
        {
            return Ok(None);
        }
        let sorted = self.set_aside_stale(ram, &build.map, found.kernels);
        Ok(Some((sorted, build)))
    }

    /// Which of the stock kernels `found` (one build each) runs, by its
    /// moving `jiffies_64` ([`stale::first_moving`]); None: none moves.
    fn running(&self, ram: &GuestRam, found: &[(stale::Sorted, Build)]) -> Option<usize> {
        let kernels: Vec<(&SystemMap, &GuestKernel)> = found
            .iter()
            .filter_map(|(s, b)| Some((&b.map, s.live.first()?)))
            .collect();
        if kernels.is_empty() || kernels.len() != found.len() {
            return None;
        }
        let i = stale::first_moving(ram, &kernels);
        if i.is_none() {
            info!(
                "{}: no stock kernel in its RAM runs (an earlier boot's image, or a paused guest)",
                self.describe()
            );
        }
        i
    }

    /// The stored references whose banner lies in `ram` at one of their
    /// kernel's possible bases.
    fn stored_references_in(&self, ram: &GuestRam) -> Vec<Reference> {
        crate::kernel::builds::references(&self.state_root)
            .into_iter()
            .filter(|r| !locate::banner_bases(ram, r.banner_offset, &r.banner).is_empty())
            .collect()
    }

    /// The packages that Debian banners anywhere in `ram` name and that no
    /// stored reference has, fetched (at most [`MAX_FETCHES`], each stored
    /// for the next time): those whose banner lies where their kernel
    /// would. An error only if none was fetched and one failed.
    fn fetch_from_banners(&self, ram: &GuestRam) -> Result<Vec<Reference>> {
        let refs = crate::kernel::builds::references(&self.state_root);
        let t = std::time::Instant::now();
        let banners = locate::banners_in(ram, MAX_FETCHES);
        debug!(
            "scanned {} for kernel banners in {:?}: {} found",
            ram.path().display(),
            t.elapsed(),
            banners.len()
        );
        let known: Vec<&str> = refs.iter().map(|r| r.banner.as_str()).collect();
        let mut fetched = Vec::new();
        let mut first_error = None;
        for banner in banners.iter().filter(|b| !known.contains(&b.as_str())) {
            let Some(pkg) = crate::kernel::debian::Package::from_banner(banner) else {
                continue;
            };
            match self.fetch_reference(&pkg) {
                Ok(r) => fetched.push(r),
                Err(e) => {
                    warn!("cannot fetch {pkg}: {e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        fetched.retain(|r| !locate::banner_bases(ram, r.banner_offset, &r.banner).is_empty());
        match (fetched.is_empty(), first_error) {
            (true, Some(e)) => Err(e),
            _ => Ok(fetched),
        }
    }

    /// Fetch Debian's image package `pkg` with apt and store its build as
    /// a reference ([`crate::kernel::debian::fetch_reference`]).
    pub fn fetch_reference(&self, pkg: &crate::kernel::debian::Package) -> Result<Reference> {
        crate::kernel::debian::fetch_reference(&self.state_root, pkg)
    }

    /// Several control blocks: set aside those of an earlier boot,
    /// remembering them in the guest's state directory.
    fn set_aside_stale(
        &self,
        ram: &GuestRam,
        map: &SystemMap,
        kernels: Vec<GuestKernel>,
    ) -> stale::Sorted {
        if kernels.len() < 2 {
            return stale::sort(ram, map, kernels, &[], 0.0);
        }
        let dir = self.dir().ok();
        let path = dir.as_ref().map(|d| d.path().join("stale-blocks.json"));
        let known: Vec<stale::Frozen> = dir
            .as_ref()
            .zip(path.as_ref())
            .and_then(|(d, p)| d.read_json(p))
            .unwrap_or_default();
        let sorted = stale::sort(ram, map, kernels, &known, now_unix());
        if let (Some(d), Some(p)) = (&dir, &path) {
            if !sorted.frozen.is_empty() && sorted.frozen != known {
                if let Err(e) = d.write_json(p, &sorted.frozen) {
                    warn!("cannot remember the stale control blocks: {e}");
                }
            }
        }
        sorted
    }

    /// Open the guest whose kernel another xftrace process already found
    /// with `_text` at guest physical `text_pa`: only that candidate is
    /// validated again (fully, page tables included).
    pub fn open_at(&self, text_pa: u64) -> Result<Guest> {
        let b = self.backing()?;
        let mut last_err = None;
        if let Some(system_map) = b.system_map.as_deref() {
            let build = self.build(system_map, b.recorded)?;
            for layout in b.layouts.clone() {
                let ram = GuestRam::open_files(&b.paths, layout, b.follow_links)?;
                match locate::locate_at(&ram, &build.map, text_pa, build.banner.as_deref()) {
                    Ok(kernel) => return self.opened(build, &b, ram, kernel, Vec::new()),
                    Err(e) => last_err = Some(e),
                }
            }
        }
        // A stock kernel, traced by the xftrace-dkms module.
        match self.open_stock(&b) {
            Ok(g) if g.kernel.text_pa.0 == text_pa && g.kernel.tracer.is_some() => Ok(g),
            Ok(_) => Err(last_err.unwrap_or_else(|| {
                Error::Guest(format!(
                    "the guest kernel is no longer at {text_pa:#x} with xftrace's tracer (its {} module unloaded, or the guest rebooted)",
                    crate::kernel::dkms::MODULE_NAME
                ))
            })),
            Err(e) => Err(last_err.unwrap_or(e)),
        }
    }

    /// The guest opened with `kernel` (and `others`, decoys) found in `ram`.
    fn opened(
        &self,
        build: Build,
        b: &Backing,
        ram: GuestRam,
        kernel: GuestKernel,
        others: Vec<GuestKernel>,
    ) -> Result<Guest> {
        let g = Guest {
            ram,
            map: build.map,
            kernel,
            others,
            stale: Vec::new(),
            vmlinux: build.vmlinux,
            system_map: build.system_map,
            module_layout: build.module_layout,
            build_modules: build.build_modules,
            module_files: build.module_files,
            max_vcpus: b.max_vcpus,
        };
        info!(
            "{}: kernel at {:#x} (slide {:#x}), {}: {}",
            self.describe(),
            g.kernel.text_pa,
            g.kernel.slide,
            g.kernel.place(),
            escape(&g.kernel.banner)
        );
        Ok(g)
    }

    /// Is the guest known not to run here (its domain stopped, or left
    /// this host; its RAM file gone)? Then no tracer of it is left on.
    pub fn known_stopped(&self) -> bool {
        match &self.source {
            Source::MemFile(m) => std::fs::symlink_metadata(&m.path).is_err(),
            Source::Domain { name, domains, .. } => domains.known_stopped(name),
        }
    }

    /// The guest's state directory.
    pub fn dir(&self) -> Result<GuestDir> {
        match &self.source {
            Source::MemFile(m) => GuestDir::for_mem_file(&self.state_root, &m.path),
            // A domain's state is created only for a domain its manager
            // knows: a mistyped name leaves nothing behind.
            Source::Domain { name, uri, domains } => {
                if let Some(d) = GuestDir::existing_domain(&self.state_root, name) {
                    return Ok(d);
                }
                if !domains.defined(name)? {
                    return Err(Error::Input(format!(
                        "no domain named '{}' at {uri} (`virsh -c {uri} list --all` lists them)",
                        escape(name)
                    )));
                }
                GuestDir::for_domain(&self.state_root, name)
            }
        }
    }

    pub fn describe(&self) -> String {
        match &self.source {
            Source::MemFile(m) => escape(&m.path.display().to_string()).into_owned(),
            Source::Domain { name, .. } => format!("domain {}", escape(name)),
        }
    }

    /// Arguments that make another xftrace process open the same target,
    /// each an `--option=value` (so no value is ever taken for an option).
    pub fn args(&self) -> Vec<OsString> {
        let opt = |name: &str, v: &std::ffi::OsStr| {
            let mut a = OsString::from(format!("--{name}="));
            a.push(v);
            a
        };
        let mut a = vec![opt("state-dir", self.state_root.as_os_str())];
        match &self.source {
            Source::MemFile(m) => {
                a.push(opt("mem-file", m.path.as_os_str()));
                if let Some(machine) = m.machine {
                    a.push(format!("--machine={}", format!("{machine:?}").to_lowercase()).into());
                }
                if let Some(l) = m.max_ram_below_4g {
                    a.push(format!("--max-ram-below-4g={l}").into());
                }
            }
            Source::Domain { name, uri, .. } => {
                a.push(opt("domain", name.as_ref()));
                a.push(opt("connect", uri.as_ref()));
            }
        }
        if let Some(m) = &self.system_map {
            a.push(opt("system-map", m.as_os_str()));
        }
        if let Some(v) = &self.vmlinux {
            a.push(opt("vmlinux", v.as_os_str()));
        }
        a
    }
}

/// What a trusted build provides (see `Target::build`).
struct Build {
    system_map: PathBuf,
    map: SystemMap,
    vmlinux: Option<Vmlinux>,
    banner: Option<String>,
    module_layout: Option<ModuleLayout>,
    build_modules: Option<std::collections::BTreeSet<String>>,
    module_files: Option<ModuleFiles>,
}

/// Packages fetched for one guest at most, whatever banners it holds (its
/// processes can write banners of other Debian kernels into their pages).
const MAX_FETCHES: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::locate::tests::{place_kernel, SLIDE};
    use crate::kernel::symbols::tests::MAP;

    fn mem_target(dir: &Path, ram: &Path) -> Target {
        let map = dir.join("System.map");
        std::fs::write(&map, MAP).unwrap();
        let root = dir.join("state");
        Target {
            source: Source::MemFile(MemFile {
                path: ram.to_path_buf(),
                machine: None,
                max_ram_below_4g: None,
                qmp: None,
            }),
            system_map: Some(map),
            vmlinux: None,
            modules: None,
            state_root: root,
        }
    }

    /// A 3 GiB guest: pc keeps it all low, q35 splits it at 2 GiB. Without
    /// --machine, the guest's own max_low_pfn tells which it is.
    #[test]
    fn large_guests_need_no_machine_type() {
        for (machine, size, low) in [
            (Machine::Q35, 3u64 << 30, 2u64 << 30),
            (Machine::Pc, 3 << 30, 3 << 30),
            (Machine::Q35, 16 << 30, 2 << 30),
            (Machine::Pc, 16 << 30, 3 << 30),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("ram");
            std::fs::File::create(&p).unwrap().set_len(size).unwrap();
            let ram = GuestRam::open(&p, MemoryLayout::x86(size, machine, None)).unwrap();
            let map = SystemMap::parse(MAP).unwrap();
            // The kernel at 64 MiB (the same place in both layouts), and
            // where the guest found its RAM to end: past 4 GiB when split,
            // else a little below the top (firmware's reservation).
            place_kernel(&ram, &map, 64 << 20, SLIDE);
            let pfn = map.addr("max_low_pfn").unwrap() - map.addr("_text").unwrap() + (64 << 20);
            let end = match size - low {
                0 => size - (128 << 10),
                high => (4 << 30) + high,
            };
            ram.write_u64(crate::guest::memory::GuestAddress(pfn), end >> 12)
                .unwrap();
            drop(ram);
            let g = mem_target(dir.path(), &p).open().unwrap();
            let first = g.ram.layout().regions()[0];
            assert_eq!(first.len, low, "{machine:?} {size:#x}");
        }
    }
}
