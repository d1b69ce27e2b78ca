//! libvirt: domains by name, enrollment, and a running domain's RAM files.
//!
//! A running domain's RAM backing comes from QEMU itself, through libvirt's
//! monitor passthrough (`virDomainQemuMonitorCommand`): `qom-list /objects`
//! names the `memory-backend-file` objects, `qom-get` gives each one's
//! `mem-path` and `size`, and HMP `info mtree -f` says which guest physical
//! ranges map to which offsets of which backend. Nothing is guessed from
//! paths. (libvirt marks a domain "tainted: custom-monitor" in its log the
//! first time this is used; the guest is unaffected.)

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

use crate::base::error::{Error, Result};
use crate::base::escape::escape;
use crate::guest::memory::{GuestAddress, MemoryLayout, RamRegion};
use crate::libvirt::domain_xml::{self, DomainFacts};

pub const DEFAULT_URI: &str = "qemu:///system";

fn lv(what: String) -> impl FnOnce(virt::error::Error) -> Error {
    move |e| Error::Libvirt(format!("{what}: {}", e.message()))
}

pub struct Libvirt {
    conn: Connect,
    uri: String,
}

/// A domain's RAM as QEMU has it.
pub struct RamBacking {
    pub paths: Vec<PathBuf>,
    pub layout: MemoryLayout,
}

/// One line of `xftrace list`.
pub struct DomainRow {
    pub name: String,
    pub running: bool,
    pub enrolled: bool,
    pub system_map: Option<String>,
    /// Why the domain's definition could not be read (its other columns
    /// are then unknown): one such domain does not hide the others.
    pub problem: Option<String>,
}

/// What enrolling did to a running domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveEnrollment {
    /// Not running, or already running with this enrollment.
    Unchanged,
    /// Running with its RAM in a shared file: it uses the new enrollment now.
    Updated,
    /// Running without a shared RAM file: only its next start can change that.
    NeedsRestart,
}

impl Libvirt {
    pub fn connect(uri: &str) -> Result<Self> {
        // libvirt's default error handler prints every error a second time,
        // raw; xftrace reports them itself.
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri)).map_err(|e| {
            Error::Libvirt(format!(
                "cannot connect to libvirt at {uri}: {} (is libvirtd running? use -c to pick another URI)",
                e.message()
            ))
        })?;
        Ok(Libvirt {
            conn,
            uri: uri.to_string(),
        })
    }

    pub fn domain(&self, name: &str) -> Result<Domain> {
        self.conn.lookup_domain_by_name(name).map_err(|e| {
            Error::Input(format!(
                "no domain named '{}' at {}: {}",
                escape(name),
                self.uri,
                e.message()
            ))
        })
    }

    /// Is there a domain `name`? Only libvirt's "no such domain" is a no.
    pub fn defined(&self, name: &str) -> Result<bool> {
        match self.conn.lookup_domain_by_name(name) {
            Ok(_) => Ok(true),
            Err(e) if e.code().is(virt::error::ErrorNumber::NoDomain) => Ok(false),
            Err(e) => Err(Error::Libvirt(format!(
                "cannot look up domain '{}' at {}: {}",
                escape(name),
                self.uri,
                e.message()
            ))),
        }
    }

    /// The persistent definition (what the next start uses).
    pub fn persistent_xml(&self, dom: &Domain) -> Result<String> {
        dom.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
            .map_err(lv("cannot read the domain's persistent XML".into()))
    }

    pub fn live_xml(&self, dom: &Domain) -> Result<String> {
        dom.xml_desc(0)
            .map_err(lv("cannot read the domain's XML".into()))
    }

    /// Enroll `name` with the stored System.map at `system_map` (from
    /// [`crate::kernel::builds::store`]; None: a stock kernel, whose build
    /// is found by its banner); returns (old XML, new XML, what
    /// became of the running domain). With
    /// `dry_run`, nothing is defined.
    ///
    /// A running domain that already has its RAM in a shared file (it was
    /// enrolled when it started) gets the new enrollment in its live
    /// definition too: a guest rebooted into a new kernel is then traced
    /// with that kernel's System.map without a cold restart.
    pub fn enroll(
        &self,
        name: &str,
        system_map: Option<&Path>,
        monitor: &[String],
        dry_run: bool,
    ) -> Result<(String, String, LiveEnrollment)> {
        let dom = self.domain(name)?;
        if !dom.is_persistent().unwrap_or(false) {
            return Err(Error::Input(format!(
                "domain {} is transient; enrollment changes the persistent definition, so define it first",
                escape(name)
            )));
        }
        let map = system_map
            .map(|m| {
                m.to_str()
                    .ok_or_else(|| Error::Input(format!("{} is not a UTF-8 path", m.display())))
            })
            .transpose()?;
        let old = self.persistent_xml(&dom)?;
        let new = domain_xml::enroll(&old, map, monitor).map_err(Error::Input)?;
        if dry_run {
            return Ok((old, new, LiveEnrollment::Unchanged));
        }
        if new != old {
            self.conn
                .define_domain_xml(&new)
                .map_err(lv(format!("cannot define domain {}", escape(name))))?;
        }
        let live = self.enroll_live(&dom, name, &new)?;
        Ok((old, new, live))
    }

    /// Give a running, file-backed domain the enrollment of `new` (its
    /// persistent XML).
    fn enroll_live(&self, dom: &Domain, name: &str, new: &str) -> Result<LiveEnrollment> {
        if !dom.is_active().unwrap_or(false) {
            return Ok(LiveEnrollment::Unchanged);
        }
        let live = domain_xml::facts(&self.live_xml(dom)?).map_err(Error::Libvirt)?;
        let want = domain_xml::facts(new).map_err(Error::Libvirt)?;
        if !live.backing_ok() {
            return Ok(LiveEnrollment::NeedsRestart);
        }
        if live.enrolled && live.system_map == want.system_map && live.monitor == want.monitor {
            return Ok(LiveEnrollment::Unchanged);
        }
        let element = domain_xml::enrollment_for_metadata(new)
            .ok_or_else(|| Error::Libvirt("the new definition lacks its enrollment".into()))?;
        dom.set_metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(&element),
            Some(domain_xml::PREFIX),
            Some(domain_xml::NAMESPACE),
            sys::VIR_DOMAIN_AFFECT_LIVE,
        )
        .map_err(lv(format!(
            "cannot update the enrollment of running domain {}",
            escape(name)
        )))?;
        Ok(LiveEnrollment::Updated)
    }

    pub fn unenroll(&self, name: &str, dry_run: bool) -> Result<(String, String)> {
        let dom = self.domain(name)?;
        let old = self.persistent_xml(&dom)?;
        let new = domain_xml::unenroll(&old).map_err(Error::State)?;
        if !dry_run {
            self.conn
                .define_domain_xml(&new)
                .map_err(lv(format!("cannot define domain {}", escape(name))))?;
        }
        Ok((old, new))
    }

    /// Facts of a running domain's live definition.
    pub fn running_facts(&self, name: &str) -> Result<(Domain, DomainFacts)> {
        let dom = self.domain(name)?;
        if !dom.is_active().unwrap_or(false) {
            return Err(Error::Guest(format!(
                "domain {} is not running; start it with `virsh start {}`",
                escape(name),
                escape(name)
            )));
        }
        if arriving(&dom) {
            return Err(Error::Guest(format!(
                "domain {} is paused while it migrates or is restored: its RAM is not all here yet; retry once it runs",
                escape(name)
            )));
        }
        let facts = domain_xml::facts(&self.live_xml(&dom)?).map_err(Error::Libvirt)?;
        Ok((dom, facts))
    }

    fn qmp(&self, dom: &Domain, cmd: Value) -> Result<Value> {
        let text = dom
            .qemu_monitor_command(&cmd.to_string(), 0)
            .map_err(lv(format!("QEMU monitor command {cmd} failed")))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Libvirt(format!("QEMU answered {cmd} with non-JSON: {e}")))?;
        v.get("return")
            .cloned()
            .ok_or_else(|| Error::Libvirt(format!("QEMU refused {cmd}: {}", v["error"])))
    }

    /// The RAM backing files of a running domain and where they sit in
    /// guest physical memory.
    pub fn ram_backing(&self, dom: &Domain, name: &str) -> Result<RamBacking> {
        let name = escape(name);
        let objects = self.qmp(
            dom,
            json!({"execute": "qom-list", "arguments": {"path": "/objects"}}),
        )?;
        let ids: Vec<String> = objects
            .as_array()
            .into_iter()
            .flatten()
            .filter(|o| o["type"] == "child<memory-backend-file>")
            .filter_map(|o| o["name"].as_str().map(str::to_string))
            .take(64)
            .collect();
        if ids.is_empty() {
            return Err(Error::Guest(format!(
                "domain {name} has no file-backed RAM; enroll it (`xftrace enroll {name}`) and restart it"
            )));
        }
        let mut paths = Vec::new();
        for id in &ids {
            let shown = escape(id);
            let get = |prop: &str| {
                self.qmp(
                    dom,
                    json!({"execute": "qom-get", "arguments": {"path": format!("/objects/{id}"), "property": prop}}),
                )
            };
            let path = PathBuf::from(get("mem-path")?.as_str().unwrap_or_default());
            let share = get("share")?.as_bool().unwrap_or(false);
            if !share {
                return Err(Error::Guest(format!(
                    "domain {name}'s memory backend {shown} is not shared; enroll it and restart it"
                )));
            }
            if path.is_dir() {
                return Err(Error::Guest(format!(
                    "domain {name}'s memory backend {shown} lives in an unlinked file under {} (hugepages?): unsupported; use a file-backed <memoryBacking> without hugepages",
                    escape(&path.display().to_string())
                )));
            }
            paths.push(path);
        }
        let mtree = dom
            .qemu_monitor_command("info mtree -f", sys::VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
            .map_err(lv("cannot read QEMU's memory map".into()))?;
        let regions = parse_mtree(&mtree, &ids);
        if regions.is_empty() {
            return Err(Error::Libvirt(format!(
                "QEMU's memory map of {name} shows none of its RAM backends ({})",
                escape(&ids.join(", "))
            )));
        }
        Ok(RamBacking {
            paths,
            layout: MemoryLayout::from_regions(regions),
        })
    }

    /// A running domain's vCPU registers: HMP `info registers -a` through
    /// the monitor passthrough (see [`crate::guest::vcpu`] for what it
    /// costs the guest).
    pub fn vcpu_registers(&self, dom: &Domain) -> Result<String> {
        dom.qemu_monitor_command(
            "info registers -a",
            sys::VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP,
        )
        .map_err(lv("cannot read the vCPUs' registers from QEMU".into()))
    }

    pub fn list(&self) -> Result<Vec<DomainRow>> {
        let doms = self
            .conn
            .list_all_domains(0)
            .map_err(lv("cannot list domains".into()))?;
        let mut rows = Vec::new();
        for d in doms {
            let name = d.name().map_err(lv("cannot read a domain name".into()))?;
            let facts = d
                .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
                .or_else(|_| self.live_xml(&d))
                .and_then(|xml| domain_xml::facts(&xml).map_err(Error::Libvirt));
            let running = d.is_active().unwrap_or(false);
            rows.push(match facts {
                Ok(f) => DomainRow {
                    name,
                    running,
                    enrolled: f.enrolled,
                    system_map: f.system_map,
                    problem: None,
                },
                Err(e) => DomainRow {
                    name,
                    running,
                    enrolled: false,
                    system_map: None,
                    problem: Some(e.to_string()),
                },
            });
        }
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rows)
    }
}

/// RAM regions of `backends` in the system address space of HMP
/// `info mtree -f` output.
/// Is the domain paused for a migration (in or out) or a restore? Its RAM
/// is then being copied, and nothing read from it or written to it holds.
fn arriving(dom: &Domain) -> bool {
    use virt::domain::{DomainPausedReason, DomainStateReason};
    use virt::enumutil::Enum;
    matches!(
        dom.state(),
        Ok((
            _,
            Enum::Known(DomainStateReason::Paused(Enum::Known(
                DomainPausedReason::Migration | DomainPausedReason::StartingUp
            )))
        ))
    )
}

pub fn parse_mtree(text: &str, backends: &[String]) -> Vec<RamRegion> {
    let mut regions = Vec::new();
    let mut in_system = false;
    let mut seen_system = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("FlatView #") {
            in_system = false;
            continue;
        }
        if l == "Root memory region: system" {
            in_system = !seen_system;
            seen_system = true;
            continue;
        }
        if !in_system {
            continue;
        }
        let parsed = (|| {
            let (range, rest) = l.split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            );
            let (attrs, rest) = rest.split_once("): ")?;
            let kind = attrs.rsplit(", ").next()?;
            if !matches!(kind, "ram" | "rom" | "romd") || b < a {
                return None;
            }
            let mut it = rest.split_whitespace();
            let name = it.next()?;
            let file = backends.iter().position(|n| n == name)?;
            let off = match it.next().and_then(|t| t.strip_prefix('@')) {
                Some(o) => u64::from_str_radix(o, 16).ok()?,
                None => 0,
            };
            Some(RamRegion {
                gpa: GuestAddress(a),
                len: b.checked_sub(a)?.checked_add(1)?,
                file,
                file_offset: off,
            })
        })();
        regions.extend(parsed);
    }
    regions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::memory::GuestAddress;

    /// QEMU 7.2 `info mtree -f` of a 512 MiB pc guest.
    const MTREE: &str = "FlatView #0
 AS \"memory\", root: system
 AS \"cpu-memory-0\", root: system
 Root memory region: system
  0000000000000000-00000000000c2fff (prio 0, ram): pc.ram
  00000000000c3000-00000000000e7fff (prio 0, rom): pc.ram @00000000000c3000
  00000000000e8000-00000000000effff (prio 0, ram): pc.ram @00000000000e8000
  00000000000f0000-00000000000fffff (prio 0, rom): pc.ram @00000000000f0000
  0000000000100000-000000001fffffff (prio 0, ram): pc.ram @0000000000100000
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios

FlatView #1
 AS \"I/O\", root: io
 Root memory region: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan
";

    #[test]
    fn memory_map_gives_one_contiguous_region() {
        let l = MemoryLayout::from_regions(parse_mtree(MTREE, &["pc.ram".into()]));
        assert_eq!(
            l.regions(),
            &[RamRegion {
                gpa: GuestAddress(0),
                len: 512 << 20,
                file: 0,
                file_offset: 0
            }]
        );
    }

    #[test]
    fn numa_backends_and_high_memory() {
        let text = "FlatView #0
 Root memory region: system
  0000000000000000-000000007fffffff (prio 0, ram): ram-node0
  0000000080000000-00000000bfffffff (prio 0, ram): ram-node1
  0000000100000000-000000013fffffff (prio 0, ram): ram-node1 @0000000040000000
";
        let l = MemoryLayout::from_regions(parse_mtree(
            text,
            &["ram-node0".into(), "ram-node1".into()],
        ));
        assert_eq!(l.nr_files(), 2);
        let at = l.locate(GuestAddress(0x1_0000_1000), 8).unwrap();
        assert_eq!((at.file, at.offset), (1, 0x4000_1000));
        assert_eq!(l.locate(GuestAddress(0x7fff_f000), 8).unwrap().file, 0);
    }
}
