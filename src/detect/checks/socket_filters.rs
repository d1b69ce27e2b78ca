//! Filters on sockets that see raw packets: a raw socket (`SOCK_RAW`) or
//! any packet socket (`AF_PACKET`) with a classic BPF filter
//! (`SO_ATTACH_FILTER`) or an eBPF program (`SO_ATTACH_BPF`) attached,
//! found on every task's open files (`kernel::objects`). A passive
//! backdoor (BPFDoor's kind) works this way: it opens such a socket, lets
//! through only its magic packet, and needs no port, no listening socket
//! and no hook; classic filters have no BPF program ID, so the
//! `bpf-program` check cannot see them. DHCP clients and packet capture
//! do it too, so the baseline's inventory says which processes may
//! (`socket-filter COMM FAMILY/TYPE classic|ebpf`); without an inventory
//! each is reported as inventory (severity low). A network device in
//! promiscuous mode is reported as inventory too, with the packet sockets
//! open.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeSet;

use super::{Check, Context, Report};
use crate::detect::{FindingKind, Severity};
use crate::kernel::objects::SocketSeen;

pub struct SocketFilters;

/// How the inventory names a filtered socket (no PID or address: stable
/// across boots).
fn line(s: &SocketSeen) -> Option<String> {
    let f = s.filter?;
    s.sees_raw_packets().then(|| {
        format!(
            "socket-filter {} {} {}",
            s.comm.replace(' ', "_"),
            s.describe(),
            if f.classic.is_some() {
                "classic"
            } else {
                "ebpf"
            }
        )
    })
}

impl Check for SocketFilters {
    fn kind(&self) -> FindingKind {
        FindingKind::SocketFilter
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        let census = cx.objects();
        let known = crate::detect::inventory::load(cx.dir);
        let mut reported = BTreeSet::new();
        for s in &census.sockets {
            let (Some(l), Some(f)) = (line(s), s.filter) else {
                continue;
            };
            if known.as_ref().is_some_and(|k| k.contains(&l)) || !reported.insert(&s.object) {
                continue;
            }
            let what = match f.classic {
                Some(n) => format!("a classic BPF filter of {n} instructions"),
                None => format!("eBPF program {} ({} instructions)", f.id, f.len),
            };
            let mut finding = out.finding(
                format!(
                    "{} ({}) has {what} attached: a socket that sees packets before the protocols do, filtered as a passive backdoor waits for its magic packet",
                    s.object,
                    s.describe()
                ),
                &[f.prog],
                match &known {
                    Some(_) => format!("the baseline's inventory has no '{l}'"),
                    None => format!("no baseline: inventory ('{l}'), not judged"),
                },
            );
            if known.is_none() {
                finding.severity = Severity::Low;
            }
            out.push(finding);
        }
        // A device in promiscuous mode receives every frame on its link:
        // a sniffer's doing, or an administrator's capture. Inventory, with
        // the packet sockets that could be reading.
        for dev in &census.promiscuous {
            let readers: Vec<&str> = census
                .sockets
                .iter()
                .filter(|s| s.family == crate::kernel::objects::AF_PACKET)
                .map(|s| s.object.as_str())
                .take(8)
                .collect();
            let mut f = out.finding(
                format!("network device {dev} is in promiscuous mode: it receives every frame on its link"),
                &[],
                if readers.is_empty() {
                    "no packet socket open".to_string()
                } else {
                    format!("packet sockets: {}", readers.join(", "))
                },
            );
            f.severity = Severity::Low;
            out.push(f);
        }
    }

    fn inventory(&self, cx: &Context) -> BTreeSet<String> {
        // (Promiscuous devices are reported as inventory, never judged.)
        cx.objects().sockets.iter().filter_map(line).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::objects::{SocketFilter, AF_INET, AF_PACKET, SOCK_RAW};

    #[test]
    fn only_filtered_sockets_that_see_raw_packets_are_named() {
        let s = SocketSeen {
            object: "socket fd 3 of pid 77 (dhclient)".into(),
            pid: 77,
            comm: "dhclient".into(),
            family: AF_PACKET,
            kind: SOCK_RAW,
            protocol: 0x300,
            filter: Some(SocketFilter {
                prog: 0xffff_c900_0000_1000,
                classic: Some(11),
                len: 20,
                id: 0,
            }),
        };
        assert_eq!(
            line(&s).as_deref(),
            Some("socket-filter dhclient packet/raw classic")
        );
        let tcp = SocketSeen {
            family: AF_INET,
            kind: 1,
            ..s.clone()
        };
        assert_eq!(
            line(&tcp),
            None,
            "a TCP socket's filter sees no raw packets"
        );
        let netlink = SocketSeen {
            family: 16,
            ..s.clone()
        };
        assert_eq!(
            line(&netlink),
            None,
            "a netlink socket carries the kernel's messages, not packets"
        );
        let bare = SocketSeen {
            filter: None,
            ..s.clone()
        };
        assert_eq!(line(&bare), None);
        let ebpf = SocketSeen {
            family: AF_INET,
            comm: "a b".into(),
            filter: Some(SocketFilter {
                classic: None,
                id: 9,
                ..s.filter.unwrap()
            }),
            ..s
        };
        assert_eq!(
            line(&ebpf).as_deref(),
            Some("socket-filter a_b inet/raw ebpf")
        );
    }
}
