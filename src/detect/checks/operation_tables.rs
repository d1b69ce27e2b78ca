//! Well-known operation tables (const, so they must equal the build).
#![deny(clippy::arithmetic_side_effects)]

use super::{compare_table, Check, Context};
use crate::detect::{Finding, FindingKind};

/// Operation tables that file-hiding rootkits swap pointers in.
pub const OPERATION_TABLES: &[&str] = &[
    "proc_root_operations",
    "proc_dir_operations",
    "proc_root_inode_operations",
    "proc_dir_inode_operations",
    "simple_dir_operations",
    "simple_dir_inode_operations",
    "ramfs_dir_inode_operations",
    "shmem_dir_inode_operations",
    "shmem_file_operations",
    "ext4_dir_operations",
    "ext4_file_operations",
    "tcp4_seq_ops",
    "udp_seq_ops",
    "raw_seq_ops",
];

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
