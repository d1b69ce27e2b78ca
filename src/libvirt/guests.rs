//! libvirt's domains as the kernel layer opens them: [`LibvirtDomains`]
//! implements [`Domains`] (a running domain's recorded System.map, its RAM
//! files and layout; whether it is known stopped).

use crate::base::error::Result;
use crate::kernel::target::{DomainRam, Domains, RunningDomain};
use crate::libvirt::connection::Libvirt;
use crate::libvirt::domain_xml::DomainFacts;

/// The domains of the libvirt at `uri`; each call connects anew.
#[derive(Clone, Debug)]
pub struct LibvirtDomains {
    uri: String,
}

impl LibvirtDomains {
    pub fn new(uri: &str) -> Self {
        LibvirtDomains {
            uri: uri.to_string(),
        }
    }
}

/// A running domain, with the connection it was found through.
struct Running {
    lv: Libvirt,
    dom: virt::domain::Domain,
    facts: DomainFacts,
    name: String,
}

impl RunningDomain for Running {
    fn system_map(&self) -> Option<String> {
        self.facts.system_map.clone()
    }

    fn ram(&self) -> Result<DomainRam> {
        let b = self.lv.ram_backing(&self.dom, &self.name)?;
        Ok(DomainRam {
            paths: b.paths,
            layout: b.layout,
        })
    }

    fn max_vcpus(&self) -> Option<u32> {
        // virDomainGetMaxVcpus: the domain's maximum (hot-pluggable) vCPUs,
        // what the guest counts as possible CPUs.
        self.dom
            .max_vcpus()
            .ok()
            .and_then(|n| u32::try_from(n).ok())
    }

    fn vcpu_registers(&self) -> Result<String> {
        self.lv.vcpu_registers(&self.dom)
    }
}

impl Domains for LibvirtDomains {
    fn running(&self, name: &str) -> Result<Box<dyn RunningDomain>> {
        let lv = Libvirt::connect(&self.uri)?;
        let (dom, facts) = lv.running_facts(name)?;
        Ok(Box::new(Running {
            lv,
            dom,
            facts,
            name: name.to_string(),
        }))
    }

    fn defined(&self, name: &str) -> Result<bool> {
        Libvirt::connect(&self.uri)?.defined(name)
    }

    fn known_stopped(&self, name: &str) -> bool {
        Libvirt::connect(&self.uri).is_ok_and(|lv| {
            lv.domain(name)
                .map_or(true, |d| !d.is_active().unwrap_or(true))
        })
    }
}
