//! The system call path, against the build: the entry code
//! (`entry_SYSCALL_64` to `entry_SYSRETQ_end`), `do_syscall_64`, and the
//! dispatchers that replaced `sys_call_table` in 6.1.85 (`x64_sys_call`,
//! and `x32_sys_call`/`ia32_sys_call` where built). An inline hook there
//! redirects every system call without touching a table. Compared byte for
//! byte except where the kernel patches itself (see [`crate::kernel::text`]).
#![deny(clippy::arithmetic_side_effects)]

use super::{Check, Context, Report};
use crate::detect::FindingKind;
use crate::kernel::text::{compare, syscall_path};

pub struct SyscallDispatch;

impl Check for SyscallDispatch {
    fn kind(&self) -> FindingKind {
        FindingKind::SyscallDispatch
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        let mut found = Vec::new();
        for r in syscall_path(cx.map()) {
            compare(&cx.image(), &r, &mut found);
        }
        out.differences(found);
    }
}
