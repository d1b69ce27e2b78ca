//! Hidden tasks, by cross-view ([`crate::kernel::tasks`]): every live task
//! is in the task list, the process tree and the PID allocator, which the
//! kernel updates together under one lock. A task missing from one of them
//! and present in another (a run queue counts as a witness) was unlinked
//! by someone other than the kernel: `ps` reads `/proc`, which the PID
//! allocator serves, and `for_each_process` reads the task list, so a
//! rootkit unlinks a task from whichever its tools fear. Tasks come and go
//! while the walks run: a task is reported only if a second census, a
//! moment later, finds it missing from the same views.
#![deny(clippy::arithmetic_side_effects)]

use super::{Check, Context, Report, SETTLE};
use crate::detect::FindingKind;
use crate::kernel::tasks::{census, Census, Task, View};

pub struct HiddenTasks;

/// Tasks missing from an enumeration, or a task count beyond `pid_max`.
fn suspects(c: &Census) -> Vec<&Task> {
    c.tasks
        .values()
        .filter(|t| !t.idle && !t.missing().is_empty())
        .collect()
}

fn views(v: &[View]) -> String {
    let names: Vec<&str> = v.iter().map(|v| v.describe()).collect();
    match names.as_slice() {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

impl Check for HiddenTasks {
    fn kind(&self) -> FindingKind {
        FindingKind::HiddenTask
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        let t = std::time::Instant::now();
        let Some(first) = census(&cx.view) else {
            log::info!("hidden-task: the build does not describe the kernel's tasks");
            return;
        };
        log::debug!(
            "hidden-task: {} tasks, {} nodes in {:?}",
            first.tasks.len(),
            first.nodes,
            t.elapsed()
        );
        if let Some(max) = cx.sym("pid_max").and_then(|a| cx.read_u32(a)) {
            let n = first.tasks.values().filter(|t| !t.idle).count();
            if u64::try_from(n).is_ok_and(|n| n > u64::from(max)) {
                out.add(
                    format!("{n} tasks, more than pid_max ({max}) allows"),
                    &[],
                    "",
                );
            }
        }
        if suspects(&first).is_empty() && first.cut.is_empty() {
            return;
        }
        // A second look: what a fork or an exit during the first explains
        // is gone by now.
        crate::base::settle::settle(SETTLE);
        let Some(second) = census(&cx.view) else {
            return;
        };
        for t in suspects(&second) {
            let Some(before) = first.tasks.get(&t.addr) else {
                continue;
            };
            if before.pid != t.pid || before.missing() != t.missing() {
                continue;
            }
            let seen: Vec<View> = t.views.iter().copied().collect();
            out.add(
                format!(
                    "{} is in {} but missing from {}: unlinked to hide it (task_struct at {:#x})",
                    t.describe(),
                    views(&seen),
                    views(&t.missing()),
                    t.addr
                ),
                &[t.addr],
                format!("seen twice, {} ms apart", SETTLE.as_millis()),
            );
        }
        for c in &second.cut {
            if first.cut.contains(c) {
                out.add(
                    format!("the task census could not be completed: {c}"),
                    &[],
                    "tasks beyond this point were not compared",
                );
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::kernel::guest::KernelView;
    use crate::kernel::locate::locate;
    use crate::kernel::tasks::tests::{guest, layouts, map, rt, task};
    use crate::testkit::synthetic::{put_link, synthetic_guest, unit_build};

    /// A task off the task list is named with the views that still hold
    /// it; a clean guest gives nothing; a task count beyond pid_max is a
    /// finding.
    #[test]
    fn a_task_unlinked_from_the_task_list_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (ram, _) = synthetic_guest(dir.path());
        let map = map();
        let k = locate(&ram, &map, None).unwrap();
        let (vmlinux, state) = unit_build(dir.path());
        let layouts = layouts();
        let details = || {
            let mut view = KernelView::new(&ram, &map, &k);
            view.btf = Some(&layouts);
            let cx = Context::new(view, &vmlinux, &state);
            let mut all = Vec::new();
            HiddenTasks.run(&cx, &mut Report::new(FindingKind::HiddenTask, &mut all));
            all.into_iter().map(|f| f.detail).collect::<Vec<_>>()
        };
        guest(&ram, 3);
        assert_eq!(details(), Vec::<String>::new());
        put_link(&ram, task(1), rt(task(3)));
        put_link(&ram, task(3) + 8, rt(task(1)));
        let got = details();
        assert_eq!(
            got,
            vec![format!(
                "task 102 (sleep) is in the process tree and the PID allocator but missing from the task list: unlinked to hide it (task_struct at {:#x})",
                rt(task(2))
            )]
        );
        guest(&ram, 3);
        put_link(&ram, 0xffff_ffff_8213_0100, 2);
        assert_eq!(details(), vec!["3 tasks, more than pid_max (2) allows"]);
    }
}
