//! What xftrace tells the systems around it: metrics for Prometheus, from
//! the state directory alone (no guest is opened).
//!
//! | module | what |
//! |---|---|
//! | [`metrics`] | the Prometheus text of every guest's collector and last check |

pub mod metrics;
