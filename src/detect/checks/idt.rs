//! The IDT: every present gate must enter kernel text at an entry symbol
//! or one of the per-vector stubs.
#![deny(clippy::arithmetic_side_effects)]

use super::{Check, Context, Report};
use crate::detect::FindingKind;

pub struct Idt;

impl Check for Idt {
    fn kind(&self) -> FindingKind {
        FindingKind::Idt
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        idt(cx, out)
    }
}

fn idt(cx: &Context, out: &mut Report) {
    let Some(table) = cx.sym("idt_table") else {
        return;
    };
    let mut b = vec![0u8; 256 * 16];
    if cx.read(table, &mut b).is_none() {
        out.add("cannot read idt_table", &[table], "");
        return;
    }
    let stubs = |name: &str| cx.map().addr(name).zip(cx.map().extent(name));
    // Per-vector stubs without symbols of their own; reserved exception
    // vectors keep the early boot handlers.
    let stub_ranges: Vec<(u64, u64)> = [
        "irq_entries_start",
        "spurious_entries_start",
        "early_idt_handler_array",
    ]
    .iter()
    .filter_map(|n| stubs(n))
    .collect();
    for (vector, g) in b.chunks_exact(16).enumerate() {
        let present = g[5] & 0x80 != 0;
        if !present {
            continue;
        }
        let handler = u64::from(u16::from_le_bytes([g[0], g[1]]))
            | u64::from(u16::from_le_bytes([g[6], g[7]])) << 16
            | u64::from(u32::from_le_bytes([g[8], g[9], g[10], g[11]])) << 32;
        let link = cx.link(handler);
        let in_stubs = stub_ranges
            .iter()
            .any(|&(a, n)| link.checked_sub(a).is_some_and(|o| o < n));
        let at_symbol = cx.map().function_at(link).is_some();
        if !cx.in_image(handler) || !(in_stubs || at_symbol) {
            out.add(
                format!("IDT vector {vector} enters {}", cx.name(handler)),
                &[
                    table.wrapping_add((vector as u64).wrapping_mul(16)),
                    handler,
                ],
                "gates must enter kernel text at an entry symbol",
            );
        }
    }
}
