//! Synthetic guests: kernels written into RAM files the way a real guest
//! lays them out (control block, banner, page tables, rings), for the unit
//! tests, the fuzz harnesses and the benches. One kit, two builds:
//!
//! - [`synthetic_kernel`] of [`MAP`] (16 MiB RAM, `_text` at [`TEXT_PA`]):
//!   the fuzzers' guest, also the benches' (see [`Synthetic`]);
//! - [`synthetic_guest`] of [`UNIT_MAP`] (160 MiB RAM, `_text` at
//!   [`UNIT_TEXT_PA`]): the unit tests' guest, whose image is large enough
//!   for their tables and code.
#![allow(clippy::arithmetic_side_effects)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use object::write::{Object, Relocation, Symbol, SymbolSection};
use object::{
    Architecture, BinaryFormat, Endianness, RelocationFlags, SectionKind, SymbolFlags, SymbolKind,
    SymbolScope,
};

use crate::abi;
use crate::guest::memory::{GuestAddress, GuestRam, Machine, MemoryLayout};
use crate::kernel::locate::{locate, GuestKernel};
use crate::kernel::symbols::SystemMap;

/// A small kernel build: an 8 MiB image at `_text`.
pub const MAP: &str = "\
ffffffff81000000 T _text
ffffffff81000100 T __x64_sys_read
ffffffff81000200 T __x64_sys_openat
ffffffff81000300 t do_sys_openat2
ffffffff81000400 T x64_sys_call
ffffffff81000500 T __fentry__
ffffffff81000510 T ftrace_caller
ffffffff81000580 T ftrace_caller_op_ptr
ffffffff81000590 T ftrace_call
ffffffff810005c0 T ftrace_caller_end
ffffffff81000600 T idt_stub
ffffffff81200000 T _etext
ffffffff81300000 D linux_banner
ffffffff81301000 D modules
ffffffff81302000 D ftrace_ops_list
ffffffff81302100 D ftrace_list_end
ffffffff81303000 D idt_table
ffffffff81305000 D super_blocks
ffffffff81305010 D init_task
ffffffff81305100 D proc_root
ffffffff81305200 D init_net
ffffffff81305300 D net_namespace_list
ffffffff81305310 D inet_protos
ffffffff81305410 D ptype_all
ffffffff81305420 D ptype_base
ffffffff81305520 D proto_list
ffffffff81305530 D tty_drivers
ffffffff81305540 D tty_ldiscs
ffffffff81305580 D formats
ffffffff81305590 D console_drivers
ffffffff813055a0 D unbound_pool_hash
ffffffff813055e0 D irq_desc_tree
ffffffff813055f0 D nr_cpu_ids
ffffffff81305600 D __per_cpu_offset
ffffffff81305700 D socket_file_ops
ffffffff81305780 D perf_fops
ffffffff81305800 D delayed_work_timer_fn
ffffffff81305900 D init_pid_ns
ffffffff81305980 D pid_max
ffffffff81400000 d xftrace_control
ffffffff81401000 D init_top_pgt
ffffffff81402000 D level3_kernel_pgt
ffffffff81403000 D level2_kernel_pgt
ffffffff81404000 D max_low_pfn
ffffffff81600000 b xftrace_heads
ffffffff81800000 B _end
0000000000001000 D timer_bases
0000000000002000 D hrtimer_bases
0000000000003000 D cpu_worker_pools
0000000000003400 D tasklet_vec
0000000000003410 D tasklet_hi_vec
0000000000004000 D runqueues
";

/// The layouts of the kernel objects [`MAP`]'s census symbols head, for
/// the fuzzers: small made-up offsets, so that the input reaches every
/// walk of `kernel::objects`.
pub fn census_btf() -> Vec<u8> {
    btf(&[
        ("list_head", 16, &[("next", 0, ""), ("prev", 8, "")]),
        ("qstr", 16, &[("name", 8, "")]),
        (
            "sock_common",
            16,
            &[("skc_family", 0, ""), ("skc_prot", 8, "")],
        ),
        (
            "work_struct",
            32,
            &[("entry", 8, "list_head"), ("func", 24, "")],
        ),
        ("timerqueue_node", 32, &[("node", 0, "")]),
        (
            "super_block",
            64,
            &[
                ("s_list", 0, ""),
                ("s_op", 16, ""),
                ("s_type", 24, ""),
                ("s_root", 32, ""),
                ("s_d_op", 40, ""),
            ],
        ),
        ("file_system_type", 16, &[("name", 0, "")]),
        (
            "dentry",
            96,
            &[
                ("d_op", 0, ""),
                ("d_inode", 8, ""),
                ("d_name", 16, "qstr"),
                ("d_child", 32, ""),
                ("d_subdirs", 48, ""),
            ],
        ),
        (
            "inode",
            64,
            &[
                ("i_op", 0, ""),
                ("i_fop", 8, ""),
                ("i_ino", 16, ""),
                ("i_mapping", 24, ""),
                ("i_sb", 32, ""),
            ],
        ),
        ("super_operations", 16, &[("free_inode", 8, "")]),
        ("address_space", 16, &[("a_ops", 8, "")]),
        (
            "proc_dir_entry",
            96,
            &[
                ("subdir", 0, ""),
                ("subdir_node", 8, ""),
                ("name", 32, ""),
                ("proc_iops", 40, ""),
                ("proc_ops", 48, ""),
                ("proc_dops", 56, ""),
                ("seq_ops", 64, ""),
            ],
        ),
        (
            "net",
            64,
            &[
                ("list", 0, ""),
                ("proc_net", 16, ""),
                ("dev_base_head", 24, ""),
            ],
        ),
        (
            "task_struct",
            192,
            &[
                ("tasks", 0, ""),
                ("files", 16, ""),
                ("pid", 24, ""),
                ("comm", 32, ""),
                ("flags", 48, ""),
                ("worker_private", 56, ""),
                ("tgid", 64, ""),
                ("signal", 72, ""),
                ("thread_node", 80, ""),
                ("children", 96, ""),
                ("sibling", 112, ""),
                ("pid_links", 128, ""),
                ("thread_pid", 144, ""),
                ("se", 152, "sched_entity"),
            ],
        ),
        ("signal_struct", 16, &[("thread_head", 0, "")]),
        (
            "pid",
            48,
            &[("level", 0, ""), ("tasks", 8, ""), ("numbers", 16, "upid")],
        ),
        ("upid", 16, &[("nr", 0, ""), ("ns", 8, "")]),
        ("pid_namespace", 64, &[("idr", 0, "idr")]),
        ("idr", 24, &[("idr_rt", 0, "xarray")]),
        (
            "rq",
            64,
            &[("curr", 0, ""), ("idle", 8, ""), ("cfs", 16, "cfs_rq")],
        ),
        ("cfs_rq", 16, &[("tasks_timeline", 0, "")]),
        ("sched_entity", 32, &[("run_node", 0, ""), ("my_q", 24, "")]),
        ("files_struct", 16, &[("fdt", 8, "")]),
        ("fdtable", 16, &[("max_fds", 0, ""), ("fd", 8, "")]),
        ("file", 32, &[("f_op", 8, ""), ("private_data", 16, "")]),
        ("socket", 32, &[("ops", 8, ""), ("sk", 16, "")]),
        (
            "sock",
            128,
            &[
                ("__sk_common", 0, "sock_common"),
                ("sk_data_ready", 16, ""),
                ("sk_state_change", 24, ""),
                ("sk_write_space", 32, ""),
                ("sk_error_report", 40, ""),
                ("sk_backlog_rcv", 48, ""),
                ("sk_destruct", 56, ""),
                ("sk_type", 64, ""),
                ("sk_protocol", 72, ""),
                ("sk_filter", 80, ""),
            ],
        ),
        ("sk_filter", 24, &[("prog", 16, "")]),
        (
            "bpf_prog",
            64,
            &[("len", 8, ""), ("orig_prog", 16, ""), ("aux", 24, "")],
        ),
        ("sock_fprog_kern", 16, &[("len", 0, "")]),
        ("bpf_prog_aux", 16, &[("id", 0, "")]),
        ("perf_event", 16, &[("prog", 0, ""), ("tp_event", 8, "")]),
        ("trace_event_call", 16, &[("name", 0, ""), ("flags", 8, "")]),
        (
            "net_device",
            128,
            &[
                ("dev_list", 0, ""),
                ("name", 16, ""),
                ("netdev_ops", 32, ""),
                ("ethtool_ops", 40, ""),
                ("header_ops", 48, ""),
                ("rx_handler", 56, ""),
                ("ptype_all", 64, ""),
                ("promiscuity", 80, ""),
                ("xdp_prog", 88, ""),
            ],
        ),
        (
            "packet_type",
            48,
            &[("type", 0, ""), ("func", 16, ""), ("list", 32, "")],
        ),
        (
            "net_protocol",
            16,
            &[("handler", 0, ""), ("err_handler", 8, "")],
        ),
        ("proto", 64, &[("node", 0, ""), ("name", 16, "")]),
        (
            "tty_driver",
            64,
            &[("tty_drivers", 0, ""), ("ops", 16, ""), ("name", 24, "")],
        ),
        ("linux_binfmt", 32, &[("lh", 0, "")]),
        (
            "console",
            96,
            &[
                ("name", 0, ""),
                ("write", 16, ""),
                ("read", 24, ""),
                ("device", 32, ""),
                ("setup", 40, ""),
                ("next", 48, ""),
            ],
        ),
        ("kthread", 32, &[("threadfn", 8, "")]),
        ("timer_base", 256, &[("vectors", 64, "")]),
        ("timer_list", 32, &[("entry", 0, ""), ("function", 24, "")]),
        (
            "delayed_work",
            96,
            &[("work", 0, "work_struct"), ("timer", 32, "")],
        ),
        ("hrtimer_cpu_base", 512, &[("clock_base", 64, "")]),
        ("hrtimer_clock_base", 48, &[("active", 16, "")]),
        (
            "hrtimer",
            64,
            &[("node", 0, "timerqueue_node"), ("function", 40, "")],
        ),
        (
            "worker_pool",
            128,
            &[
                ("worklist", 16, ""),
                ("workers", 32, ""),
                ("hash_node", 48, ""),
            ],
        ),
        ("worker", 64, &[("node", 0, ""), ("current_func", 24, "")]),
        ("tasklet_struct", 32, &[("next", 0, ""), ("func", 16, "")]),
        ("irq_desc", 64, &[("action", 16, "")]),
        (
            "irqaction",
            64,
            &[
                ("handler", 0, ""),
                ("next", 16, ""),
                ("thread_fn", 24, ""),
                ("name", 32, ""),
                ("irq", 40, ""),
            ],
        ),
        ("xarray", 16, &[("xa_head", 8, "")]),
    ])
}

/// RAM of the fuzzers' guest.
pub const RAM: u64 = 16 << 20;
/// Where the fuzzers' guest has its kernel.
pub const TEXT_PA: u64 = 4 << 20;
/// The KASLR slide of [`synthetic_kernel`].
pub const SLIDE: u64 = 0x2000_0000;
/// Where [`synthetic_kernel`] puts its rings when `_text` is at [`TEXT_PA`].
pub const RINGS_PA: u64 = 14 << 20;
/// Slots of each of [`synthetic_kernel`]'s two rings.
pub const RING_SLOTS: u64 = 64;

/// Write a consistent kernel of [`MAP`] with `_text` at guest physical
/// `text_pa` (2 MiB-aligned), slid by [`SLIDE`]: control block, banner,
/// page tables (4-level, 2 MiB pages, the text's executable and the rest
/// of the image not, as a running kernel maps them; one 4 KiB module page
/// at 0xffffffffc0000000, executable), two rings right above the image, `max_low_pfn`,
/// empty module and ftrace_ops lists. `put(gpa, bytes)` does the writing.
pub fn synthetic_kernel(text_pa: u64, put: &mut dyn FnMut(u64, &[u8])) {
    let map = SystemMap::parse(MAP).expect("MAP parses");
    let at = |s: &str| map.addr(s).unwrap() - map.addr("_text").unwrap() + text_pa;
    let rt = |s: &str| map.addr(s).unwrap() + SLIDE;
    let mut put64 = |gpa: u64, v: u64| put(gpa, &v.to_le_bytes());
    let ctl = at("xftrace_control");
    let rings = text_pa + (10 << 20);
    put64(ctl, abi::MAGIC);
    put64(ctl + 8, u64::from(abi::ABI_VERSION) | (4096 << 32));
    put64(ctl + 0x10, rt("xftrace_control"));
    put64(ctl + 0x18, rt("xftrace_heads"));
    put64(ctl + 0x20, rt("_text"));
    put64(ctl + 0x28, 2 | (RING_SLOTS << 32));
    put64(ctl + 0x30, 64 | (2 << 32));
    put64(ctl + 0x38, 1024 | (16 << 32));
    for r in 0..2u64 {
        put64(ctl + 0x800 + 8 * r, rings + r * RING_SLOTS * 64);
    }
    let text_va = rt("_text");
    let (pgd, l3, l2) = (
        at("init_top_pgt"),
        at("level3_kernel_pgt"),
        at("level2_kernel_pgt"),
    );
    put64(pgd + 8 * ((text_va >> 39) & 511), l3 | 0x63);
    put64(l3 + 8 * ((text_va >> 30) & 511), l2 | 0x63);
    for i in 0..4u64 {
        let va = text_va + (i << 21);
        // The first 2 MiB are the text (`_text` to `_etext`): an image
        // executable beyond it would be hidden code to every check.
        let nx = if i == 0 { 0 } else { 1 << 63 };
        put64(
            l2 + 8 * ((va >> 21) & 511),
            (text_pa + (i << 21)) | 0xe3 | nx,
        );
    }
    // Module memory: one 4 KiB page mapped through the same tables.
    let module_va = 0xffff_ffff_c000_0000u64;
    let (l2m, ptm, page) = (l2 + 0x10_0000, l2 + 0x10_1000, text_pa + (9 << 20));
    put64(l3 + 8 * ((module_va >> 30) & 511), l2m | 0x63);
    put64(l2m + 8 * ((module_va >> 21) & 511), ptm | 0x63);
    put64(ptm + 8 * ((module_va >> 12) & 511), page | 0x63);
    put64(at("max_low_pfn"), RAM >> 12);
    put64(at("modules"), rt("modules"));
    put64(at("ftrace_ops_list"), rt("ftrace_list_end"));
    put(at("linux_banner"), b"Linux version 6.1.192 (fuzz) #1\n\0");
}

/// A minimal x86_64 ELF with `.text` at `text_addr`, a `.rela.text` of
/// `relocs` (offset, type, symbol), and a symbol table whose symbol 1 is in
/// `.text`, symbol 2 absolute and symbol 3 in `.data..percpu`.
pub fn elf(text_addr: u64, text: &[u8], relocs: &[(u64, u32, u64)]) -> Vec<u8> {
    elf_with_btf(text_addr, text, relocs, &[])
}

/// [`elf`] with a `.BTF` section of `btf` (none if empty).
pub fn elf_with_btf(
    text_addr: u64,
    text: &[u8],
    relocs: &[(u64, u32, u64)],
    btf: &[u8],
) -> Vec<u8> {
    const SHT_RELA: u32 = 4;
    const SHT_SYMTAB: u32 = 2;
    let shstr = b"\0.text\0.rela.text\0.symtab\0.data..percpu\0.shstrtab\0.BTF\0".to_vec();
    let mut symtab = vec![0u8; 24 * 4];
    symtab[24 + 6..24 + 8].copy_from_slice(&1u16.to_le_bytes());
    symtab[48 + 6..48 + 8].copy_from_slice(&0xfff1u16.to_le_bytes());
    symtab[72 + 6..72 + 8].copy_from_slice(&4u16.to_le_bytes());
    let mut rela = Vec::new();
    for &(off, ty, sym) in relocs {
        rela.extend_from_slice(&off.to_le_bytes());
        rela.extend_from_slice(&((sym << 32) | u64::from(ty)).to_le_bytes());
        rela.extend_from_slice(&0u64.to_le_bytes());
    }
    let mut out = vec![0u8; 64];
    let mut place = |data: &[u8]| {
        let o = out.len() as u64;
        out.extend_from_slice(data);
        o
    };
    let text_off = place(text);
    let rela_off = place(&rela);
    let sym_off = place(&symtab);
    let str_off = place(&shstr);
    let btf_off = place(btf);
    let shoff = out.len() as u64;
    let sh = |name: u32, ty: u32, addr: u64, off: u64, size: u64, link: u32, info: u32| {
        let mut h = vec![0u8; 64];
        h[0..4].copy_from_slice(&name.to_le_bytes());
        h[4..8].copy_from_slice(&ty.to_le_bytes());
        h[0x10..0x18].copy_from_slice(&addr.to_le_bytes());
        h[0x18..0x20].copy_from_slice(&off.to_le_bytes());
        h[0x20..0x28].copy_from_slice(&size.to_le_bytes());
        h[0x28..0x2c].copy_from_slice(&link.to_le_bytes());
        h[0x2c..0x30].copy_from_slice(&info.to_le_bytes());
        h
    };
    out.extend(sh(0, 0, 0, 0, 0, 0, 0));
    let mut text_header = sh(1, 1, text_addr, text_off, text.len() as u64, 0, 0);
    // SHF_ALLOC | SHF_EXECINSTR, as a vmlinux's .text has them.
    text_header[8..16].copy_from_slice(&6u64.to_le_bytes());
    out.extend(text_header);
    out.extend(sh(7, SHT_RELA, 0, rela_off, rela.len() as u64, 3, 1));
    out.extend(sh(18, SHT_SYMTAB, 0, sym_off, symtab.len() as u64, 5, 0));
    out.extend(sh(26, 1, 0, 0, 0, 0, 0));
    out.extend(sh(40, 3, 0, str_off, shstr.len() as u64, 0, 0));
    let mut sections = 6u16;
    if !btf.is_empty() {
        out.extend(sh(50, 1, 0, btf_off, btf.len() as u64, 0, 0));
        sections += 1;
    }
    out[0..6].copy_from_slice(b"\x7fELF\x02\x01");
    out[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
    out[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
    out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    out[0x3c..0x3e].copy_from_slice(&sections.to_le_bytes());
    out[0x3e..0x40].copy_from_slice(&5u16.to_le_bytes());
    out
}

pub const UNIT_MAP: &str = "\
ffffffff81000000 T _text
ffffffff81000000 T startup_64
ffffffff81200000 T __x64_sys_read
ffffffff81200040 T __x64_sys_readv
ffffffff81200100 T __x64_sys_openat
ffffffff81200200 t do_sys_openat2
ffffffff81200300 T getname
ffffffff81200400 T vfs_read
ffffffff82000000 D linux_banner
ffffffff82001000 d xftrace_control
ffffffff82002000 D init_top_pgt
ffffffff82003000 D level3_kernel_pgt
ffffffff82004000 D level2_kernel_pgt
ffffffff82005000 D max_low_pfn
ffffffff82005040 D jiffies_64
ffffffff82005100 D nr_cpu_ids
ffffffff82005140 D __per_cpu_offset
ffffffff82400000 b xftrace_heads
ffffffff83000000 B _end
";

/// The KASLR slide of [`synthetic_guest`].
pub const UNIT_SLIDE: u64 = 0x1e00_0000;
/// Where [`synthetic_guest`] has `_text`.
pub const UNIT_TEXT_PA: u64 = 0x0400_0000;

/// A 160 MiB RAM image with a kernel of [`UNIT_MAP`] at
/// [`UNIT_TEXT_PA`], slid by [`UNIT_SLIDE`], its control block mapped by its own page
/// tables.
pub fn synthetic_guest(dir: &Path) -> (GuestRam, SystemMap) {
    let map = SystemMap::parse(UNIT_MAP).unwrap();
    let p = dir.join("ram");
    let size = 160u64 << 20;
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    let ram = GuestRam::open(&p, MemoryLayout::x86(size, Machine::Pc, None)).unwrap();
    place_kernel(&ram, &map, UNIT_TEXT_PA, UNIT_SLIDE);
    (ram, map)
}

/// Write `val` at link-time address `link` of [`synthetic_guest`]'s image
/// (which it maps linearly from [`UNIT_TEXT_PA`]).
pub fn put_link(ram: &GuestRam, link: u64, val: u64) {
    ram.write_u64(
        GuestAddress(link - 0xffff_ffff_8100_0000 + UNIT_TEXT_PA),
        val,
    )
    .unwrap()
}

/// What a check of [`synthetic_guest`] needs besides the guest: a
/// vmlinux (one empty page of text, no BTF) and a state directory, in
/// `dir`.
pub fn unit_build(
    dir: &Path,
) -> (
    crate::kernel::vmlinux::Vmlinux,
    crate::host::statedir::GuestDir,
) {
    let vpath = dir.join("vmlinux");
    std::fs::write(&vpath, elf(0xffff_ffff_8100_0000, &[0u8; 0x1000], &[])).unwrap();
    let vmlinux = crate::kernel::vmlinux::Vmlinux::load(&vpath).unwrap();
    let state = crate::host::statedir::GuestDir::for_domain(&dir.join("state"), "t").unwrap();
    (vmlinux, state)
}

pub fn pa_of(map: &SystemMap, text_pa: u64, sym: &str) -> u64 {
    map.addr(sym).unwrap() - map.addr("_text").unwrap() + text_pa
}

/// The identity part of a control block and the banner (what a spraying
/// process can copy), without page tables.
pub fn place_control(ram: &GuestRam, map: &SystemMap, text_pa: u64, slide: u64) {
    let ctl = pa_of(map, text_pa, "xftrace_control");
    let w = |o: u64, v: u64| ram.write_u64(GuestAddress(ctl + o), v).unwrap();
    w(abi::off::MAGIC, abi::MAGIC);
    w(
        abi::off::ABI_VERSION,
        u64::from(abi::ABI_VERSION) | (4096 << 32),
    );
    w(
        abi::off::CTL_VA,
        map.addr("xftrace_control").unwrap() + slide,
    );
    w(
        abi::off::HEADS_VA,
        map.addr("xftrace_heads").unwrap() + slide,
    );
    w(abi::off::TEXT_VA, map.addr("_text").unwrap() + slide);
    w(abi::off::NR_RINGS, 2 | (256 << 32));
    w(abi::off::SLOT_SIZE, 64 | (2 << 32));
    w(abi::off::FUNCS_SIZE, 1024 | (16 << 32));
    let banner = pa_of(map, text_pa, "linux_banner");
    let text = b"Linux version 6.1.192 (test) #1 SMP\n\0\0\0\0";
    for (i, c) in text.chunks(8).enumerate() {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        ram.write_u64(GuestAddress(banner + 8 * i as u64), u64::from_le_bytes(b))
            .unwrap();
    }
}

/// A whole kernel: the control block, the banner, the 4-level page
/// tables of head_64.S mapping the image with 2 MiB pages, and rings.
pub fn place_kernel(ram: &GuestRam, map: &SystemMap, text_pa: u64, slide: u64) {
    place_control(ram, map, text_pa, slide);
    let pgd = pa_of(map, text_pa, "init_top_pgt");
    let l3 = pa_of(map, text_pa, "level3_kernel_pgt");
    let l2 = pa_of(map, text_pa, "level2_kernel_pgt");
    let text_va = map.addr("_text").unwrap() + slide;
    let set = |t: u64, i: u64, v: u64| ram.write_u64(GuestAddress(t + 8 * i), v).unwrap();
    set(pgd, (text_va >> 39) & 511, l3 | 0x63);
    set(l3, (text_va >> 30) & 511, l2 | 0x63);
    let (start, end) = map.image();
    let mut off = 0;
    while off < end - start {
        set(l2, ((text_va + off) >> 21) & 511, (text_pa + off) | 0xe3);
        off += 2 << 20;
    }
    // Rings, as the guest allocates them at the first "on", at 128 MiB.
    for r in 0..2u64 {
        let ring = (128 << 20) + r * (256 * 64);
        ram.write_u64(
            GuestAddress(pa_of(map, text_pa, "xftrace_control") + abi::ring_pa(r as u32)),
            ring,
        )
        .unwrap();
    }
    // max_low_pfn: all of a pc guest's 160 MiB is low.
    ram.write_u64(
        GuestAddress(pa_of(map, text_pa, "max_low_pfn")),
        (160 << 20) >> 12,
    )
    .unwrap();
}

/// Where [`Synthetic`] has `_text`.
pub const BENCH_TEXT_PA: u64 = 16 << 20;
/// Where [`Synthetic`] puts its rings.
pub const BENCH_RINGS_PA: u64 = 64 << 20;

/// The fuzzers' kernel in a RAM file of a pc machine, its header and
/// ring pointers rewritten for `rings` rings of `slots` slots at
/// [`BENCH_RINGS_PA`]: the benches' guest.
pub struct Synthetic {
    pub file: File,
    layout: MemoryLayout,
    pub ram: GuestRam,
    pub kernel: GuestKernel,
}

/// Write `b` at guest physical `gpa` of the RAM file.
fn put_at(file: &File, layout: &MemoryLayout, gpa: u64, b: &[u8]) {
    let off = layout
        .to_file_offset(GuestAddress(gpa), b.len() as u64)
        .expect("in RAM");
    file.write_all_at(b, off).unwrap();
}

impl Synthetic {
    /// Create the RAM file `path` of `size` bytes (it must not exist).
    pub fn create(path: &Path, size: u64, rings: u32, slots: u64) -> Synthetic {
        assert!(slots.is_power_of_two() && slots <= u64::from(abi::MAX_RING_SLOTS));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap();
        file.set_len(size).unwrap();
        let layout = MemoryLayout::x86(size, Machine::Pc, None);
        synthetic_kernel(BENCH_TEXT_PA, &mut |gpa, b| put_at(&file, &layout, gpa, b));
        let ram = GuestRam::open(path, layout.clone()).unwrap();
        let map = SystemMap::parse(MAP).unwrap();
        // More or bigger rings than the fuzzers': the header and ring
        // pointers say so.
        let k0 = locate(&ram, &map, None).expect("located");
        let header = [
            (abi::off::NR_RINGS, u64::from(rings) | (slots << 32)),
            (
                abi::off::SLOT_SIZE,
                abi::SLOT_SIZE | (u64::from(rings) << 32),
            ),
        ];
        for (off, v) in header {
            put_at(
                &file,
                &layout,
                k0.control().unwrap().field(off).0,
                &v.to_le_bytes(),
            );
        }
        for r in 0..rings {
            let pa = BENCH_RINGS_PA + u64::from(r) * slots * abi::SLOT_SIZE;
            put_at(
                &file,
                &layout,
                k0.control().unwrap().field(abi::ring_pa(r)).0,
                &pa.to_le_bytes(),
            );
        }
        let kernel = locate(&ram, &map, None).expect("located again");
        assert_eq!(
            u64::from(kernel.control().unwrap().header.ring_slots),
            slots
        );
        assert_eq!(kernel.control().unwrap().header.nr_rings, rings);
        Synthetic {
            file,
            layout,
            ram,
            kernel,
        }
    }

    /// Write `b` at guest physical `gpa`.
    pub fn put(&self, gpa: u64, b: &[u8]) {
        put_at(&self.file, &self.layout, gpa, b);
    }

    /// Where ring `ring` starts.
    pub fn ring_pa(&self, ring: u32) -> u64 {
        BENCH_RINGS_PA
            + u64::from(ring)
                * u64::from(self.kernel.control().unwrap().header.ring_slots)
                * abi::SLOT_SIZE
    }
}

/// A struct for [`btf`]: name, size, members (name, byte offset, type).
pub type StructLayout<'a> = (&'a str, u32, &'a [(&'a str, u32, &'a str)]);

/// A BTF holding `structs`, each `(name, size, members)` with members
/// `(name, byte offset, type)`: type "" is an 8-byte integer, any other the
/// name of one of `structs` (for nested members such as `d_name.name`).
pub fn btf(structs: &[StructLayout]) -> Vec<u8> {
    let mut strings = vec![0u8];
    let mut name = |s: &str| {
        let off = strings.len() as u32;
        strings.extend_from_slice(s.as_bytes());
        strings.push(0);
        off
    };
    let mut types = Vec::new();
    let word = |t: &mut Vec<u8>, v: u32| t.extend_from_slice(&v.to_le_bytes());
    // 1: an 8-byte integer.
    let long = name("long");
    word(&mut types, long);
    word(&mut types, 1 << 24);
    word(&mut types, 8);
    word(&mut types, 64);
    let id = |ty: &str| -> u32 {
        if ty.is_empty() {
            1
        } else {
            2 + structs
                .iter()
                .position(|s| s.0 == ty)
                .expect("a struct of the list") as u32
        }
    };
    for (sname, size, members) in structs {
        let n = name(sname);
        word(&mut types, n);
        word(&mut types, (4 << 24) | members.len() as u32);
        word(&mut types, *size);
        for (m, off, ty) in members.iter() {
            let mn = name(m);
            word(&mut types, mn);
            word(&mut types, id(ty));
            word(&mut types, off * 8);
        }
    }
    btf_blob(&types, &strings)
}

/// A BTF blob: its header, then `types` and `strings` as they are.
pub fn btf_blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xeb9fu16.to_le_bytes());
    out.extend_from_slice(&[1, 0]);
    for v in [
        24,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(types);
    out.extend_from_slice(strings);
    out
}

/// A loadable module (`.ko`): `.text` (an ftrace call site, a call to `_printk`, a
/// call to a local function and a load of its own data), `.init.text`
/// (left out of the core), `.exit.text`, `__mcount_loc` and `.data`.
pub fn synthetic_ko() -> Vec<u8> {
    let mut o = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let text = o.add_section(Vec::new(), b".text".to_vec(), SectionKind::Text);
    let mut code = vec![0xe8, 0, 0, 0, 0]; // call __fentry__
    code.extend([0xe8, 0, 0, 0, 0]); // call _printk
    code.extend([0xe8, 0, 0, 0, 0]); // call helper
    code.extend([0x48, 0x8b, 0x05, 0, 0, 0, 0]); // mov data(%rip), %rax
    code.extend([0xc3, 0xcc, 0xcc, 0xcc]); // ret
    code.extend([0xc3]); // helper: ret
    o.append_section_data(text, &code, 16);
    let init = o.add_section(Vec::new(), b".init.text".to_vec(), SectionKind::Text);
    o.append_section_data(init, &[0x31, 0xc0, 0xc3], 1);
    let exit = o.add_section(Vec::new(), b".exit.text".to_vec(), SectionKind::Text);
    o.append_section_data(exit, &[0x90, 0xc3], 1);
    let data = o.add_section(Vec::new(), b".data".to_vec(), SectionKind::Data);
    o.append_section_data(data, &[7u8; 24], 8);
    let mcount = o.add_section(
        Vec::new(),
        b"__mcount_loc".to_vec(),
        SectionKind::ReadOnlyData,
    );
    o.append_section_data(mcount, &[0u8; 8], 1);
    let import = |o: &mut Object, name: &str| {
        o.add_symbol(Symbol {
            name: name.as_bytes().to_vec(),
            value: 0,
            size: 0,
            kind: SymbolKind::Text,
            scope: SymbolScope::Unknown,
            weak: false,
            section: SymbolSection::Undefined,
            flags: SymbolFlags::None,
        })
    };
    let fentry = import(&mut o, "__fentry__");
    let printk = import(&mut o, "_printk");
    let text_sym = o.section_symbol(text);
    let data_sym = o.section_symbol(data);
    let r = |o: &mut Object, s, at, sym, addend, r_type| {
        o.add_relocation(
            s,
            Relocation {
                offset: at,
                symbol: sym,
                addend,
                flags: RelocationFlags::Elf { r_type },
            },
        )
        .unwrap()
    };
    r(&mut o, text, 1, fentry, -4, object::elf::R_X86_64_PLT32);
    r(&mut o, text, 6, printk, -4, object::elf::R_X86_64_PLT32);
    r(
        &mut o,
        text,
        11,
        text_sym,
        26 - 4,
        object::elf::R_X86_64_PLT32,
    );
    r(
        &mut o,
        text,
        18,
        data_sym,
        8 - 4,
        object::elf::R_X86_64_PC32,
    );
    r(&mut o, mcount, 0, text_sym, 0, object::elf::R_X86_64_64);
    o.write().unwrap()
}

/// A bzImage whose payload is an LZ4 legacy frame of `decompressed` (one
/// block of literals only, valid LZ4 with nothing compressed), as
/// `kernel::bzimage::unpack` reads it: the fuzz seed of a stock kernel's
/// `vmlinuz`.
pub fn bzimage_of(decompressed: &[u8]) -> Vec<u8> {
    let n = decompressed.len();
    assert!(n < 8 << 20, "one LZ4 legacy block");
    let mut block = Vec::new();
    if n < 15 {
        block.push((n as u8) << 4);
    } else {
        block.push(0xf0);
        let mut r = n - 15;
        while r >= 255 {
            block.push(255);
            r -= 255;
        }
        block.push(r as u8);
    }
    block.extend_from_slice(decompressed);
    let mut payload = 0x184C_2102u32.to_le_bytes().to_vec();
    payload.extend_from_slice(&(block.len() as u32).to_le_bytes());
    payload.extend_from_slice(&block);
    payload.extend_from_slice(&(n as u32).to_le_bytes());
    // One setup sector: the protected-mode part starts at 1 KiB.
    let pm = 2 * 512;
    let mut b = vec![0u8; pm + 0x40];
    b[0x1f1] = 1;
    b[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    b[0x248..0x24c].copy_from_slice(&0x40u32.to_le_bytes());
    b[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(&payload);
    b
}

/// A KASLR relocation table as arch/x86/tools/relocs.c appends it to the
/// vmlinux in a bzImage (read backwards: 32-bit sites, inverse 32-bit
/// sites, 64-bit sites, each list after a 0).
pub fn relocs_table(abs32: &[u64], neg: &[u64], abs64: &[u64]) -> Vec<u8> {
    let mut t = Vec::new();
    for list in [abs64, neg, abs32] {
        t.extend_from_slice(&0u32.to_le_bytes());
        for &a in list {
            t.extend_from_slice(&(a as u32).to_le_bytes());
        }
    }
    t
}
