//! Well-known operation tables (const, so they must equal the build).
#![deny(clippy::arithmetic_side_effects)]

use super::{compare_table, Check, Context, Report, OPERATION_TABLES};
use crate::detect::FindingKind;

pub struct OperationTables;

impl Check for OperationTables {
    fn kind(&self) -> FindingKind {
        FindingKind::OperationTable
    }

    fn run(&self, cx: &Context, out: &mut Report) {
        operation_tables(cx, out)
    }
}

fn operation_tables(cx: &Context, out: &mut Report) {
    for table in OPERATION_TABLES {
        compare_table(cx, table, &|i| format!("{table} slot {i}"), out);
    }
}
