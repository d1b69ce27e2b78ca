//! The live state of a guest's vCPUs that the kernel's memory does not
//! show: where each CPU's IDT register and page-table root (CR3) point.
//!
//! QEMU gives them through its monitor, HMP `info registers -a` (QMP has
//! no register query in 7.2): one block per vCPU, `CPU#N`, then lines such
//! as `IDT=     fffffe0000000000 00000fff` and `CR0=… CR2=… CR3=… CR4=…`.
//! It does not pause the guest: QEMU has each vCPU leave guest mode once
//! to hand over its registers (under KVM, one exit per vCPU), then resume.
//! Model-specific registers (the system call entry, `MSR_LSTAR`) are not
//! in that output, and nothing else in the monitor reads them without
//! stopping the guest.
//!
//! The text comes from QEMU, a process the guest may have compromised no
//! more than the host has; it is parsed with bounds all the same.

/// One vCPU's registers, as far as the monitor gave them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuRegs {
    /// QEMU's CPU index.
    pub cpu: u32,
    /// `IDTR`: base (a guest virtual address) and limit.
    pub idt: Option<(u64, u32)>,
    /// `CR3`: the page-table root (physical, with PCID bits).
    pub cr3: Option<u64>,
    /// The CPU runs in 64-bit long mode (`EFER.LMA`).
    pub long_mode: bool,
}

/// vCPUs read from one answer, at most.
const MAX_VCPUS: usize = 8192;
/// Lines read from one answer, at most (a vCPU's block is about 40).
const MAX_LINES: usize = 8192 * 64;

/// The vCPUs in `info registers -a` output; Err if it holds none.
pub fn parse_info_registers(text: &str) -> Result<Vec<VcpuRegs>, String> {
    let mut out: Vec<VcpuRegs> = Vec::new();
    for line in text.lines().take(MAX_LINES) {
        let line = line.trim_end_matches('\r');
        if let Some(n) = line.strip_prefix("CPU#") {
            if out.len() >= MAX_VCPUS {
                break;
            }
            let cpu = n
                .trim()
                .parse()
                .map_err(|_| format!("QEMU's register dump names a CPU oddly: {line:.40}"))?;
            out.push(VcpuRegs {
                cpu,
                idt: None,
                cr3: None,
                long_mode: false,
            });
            continue;
        }
        let Some(cur) = out.last_mut() else {
            continue;
        };
        if let Some(rest) = line.strip_prefix("IDT=") {
            let mut f = rest.split_whitespace();
            let base = f.next().and_then(|b| u64::from_str_radix(b, 16).ok());
            let limit = f.next().and_then(|l| u32::from_str_radix(l, 16).ok());
            if let (Some(b), Some(l)) = (base, limit) {
                cur.idt = Some((b, l));
            }
        } else if line.starts_with("CR0=") {
            cur.cr3 = field(line, "CR3=");
        } else if let Some(efer) = line.strip_prefix("EFER=") {
            cur.long_mode = u64::from_str_radix(efer.trim(), 16).is_ok_and(|e| e & (1 << 10) != 0);
        }
    }
    if out.is_empty() {
        return Err("QEMU's register dump names no CPU".into());
    }
    Ok(out)
}

/// The hex value after `name` in a line of `NAME=value` pairs.
fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(name)?;
    let v = line.get(at.checked_add(name.len())?..)?;
    let end = v.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(v.len());
    u64::from_str_radix(v.get(..end)?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU 7.2's dump of a 2-vCPU 6.1 guest (trimmed: FPU and vector
    /// registers left out).
    const DUMP: &str = "CPU#0\r
RAX=0000000000000000 RBX=0000000000000000 RCX=0000000000000001 RDX=000000000000f35e\r
RIP=ffffffffa7f6a1be RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\r
CS =0010 0000000000000000 ffffffff 00a09b00 DPL=0 CS64 [-RA]\r
GDT=     fffffe0000001000 0000007f\r
IDT=     fffffe0000000000 00000fff\r
CR0=80050033 CR2=00007f4f8e5c41e0 CR3=0000000002a10000 CR4=003506f0\r
EFER=0000000000000d01\r
CPU#1\r
IDT=     ffff888004a12000 00000fff\r
CR0=80050033 CR2=0000000000000000 CR3=0000000004c3e806 CR4=003506f0\r
EFER=0000000000000d01\r
";

    #[test]
    fn reads_each_vcpus_idtr_and_cr3() {
        let v = parse_info_registers(DUMP).unwrap();
        assert_eq!(
            v,
            vec![
                VcpuRegs {
                    cpu: 0,
                    idt: Some((0xffff_fe00_0000_0000, 0xfff)),
                    cr3: Some(0x2a1_0000),
                    long_mode: true,
                },
                VcpuRegs {
                    cpu: 1,
                    idt: Some((0xffff_8880_04a1_2000, 0xfff)),
                    cr3: Some(0x4c3_e806),
                    long_mode: true,
                },
            ]
        );
    }

    #[test]
    fn odd_or_hostile_text_is_an_error_or_partial_never_a_panic() {
        assert!(parse_info_registers("").is_err());
        assert!(parse_info_registers("CPU#x\n").is_err());
        let v = parse_info_registers("CPU#3\nIDT= zz\nCR0= CR3=\nEFER=\n").unwrap();
        assert_eq!(v[0].idt, None);
        assert_eq!(v[0].cr3, None);
        let many = "CPU#1\n".repeat(MAX_VCPUS + 10);
        assert_eq!(parse_info_registers(&many).unwrap().len(), MAX_VCPUS);
    }
}
