//! `sys_call_table` and its ia32/x32 siblings against the build. On
//! 6.1.85+ `x64_sys_call()` dispatches, so an overwritten entry no longer
//! redirects syscalls, but it is still a rootkit's mark.
#![deny(clippy::arithmetic_side_effects)]

use super::{compare_table, Check, Context, Report};
use crate::detect::FindingKind;

pub struct SyscallTables;

impl Check for SyscallTables {
    fn kind(&self) -> FindingKind {
        FindingKind::SyscallTable
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        syscall_tables(cx, out)
    }
}

fn syscall_tables(cx: &Context, out: &mut Report) {
    for table in [
        "sys_call_table",
        "ia32_sys_call_table",
        "x32_sys_call_table",
    ] {
        compare_table(cx, table, &|i| format!("{table}[{i}]"), out);
    }
}
