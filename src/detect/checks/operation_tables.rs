//! Well-known operation tables (const, so they must equal the build).
#![deny(clippy::arithmetic_side_effects)]

use super::{compare_table, Check, Context, OPERATION_TABLES};
use crate::detect::{Finding, FindingKind};

pub struct OperationTables;

impl Check for OperationTables {
    fn kind(&self) -> FindingKind {
        FindingKind::OperationTable
    }

    fn run(&self, cx: &Context, out: &mut Vec<Finding>) {
        operation_tables(cx, out)
    }
}

fn operation_tables(cx: &Context, out: &mut Vec<Finding>) {
    for table in OPERATION_TABLES {
        compare_table(
            cx,
            table,
            FindingKind::OperationTable,
            &|i| format!("{table} slot {i}"),
            out,
        );
    }
}
