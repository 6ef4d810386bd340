//! Metric names, recorded through the `metrics` facade: the host installs the
//! exporter it likes (Prometheus, StatsD...); without one they cost nothing.
//! Each is documented in docs/operations.md.

/// Gauge: command actors alive in this host.
pub const LIVE_COMMANDS: &str = "command_coordinator_live_commands";
/// Gauge, label `status`: live commands by status.
pub const COMMANDS: &str = "command_coordinator_commands";
/// Counter, label `status`: committed status changes (rate = transitions/s).
pub const TRANSITIONS: &str = "command_coordinator_transitions_total";
/// Counter: calls of commands' `poll`.
pub const POLLS: &str = "command_coordinator_polls_total";
/// Counter: actor restarts after a panic in command code.
pub const RESTARTS: &str = "command_coordinator_restarts_total";
/// Counter: end-method attempts that failed and were retried.
pub const END_RETRIES: &str = "command_coordinator_end_retries_total";
/// Counter: cancellations delivered to live commands.
pub const CANCELLATIONS: &str = "command_coordinator_cancellations_total";
/// Histogram, seconds: from a child's end being committed to its parent
/// handling it.
pub const CHILD_TO_PARENT_SECONDS: &str = "command_coordinator_child_to_parent_seconds";
/// Counter: rows removed by cleanup.
pub const CLEANUP_REMOVED: &str = "command_coordinator_cleanup_removed_rows_total";
/// Histogram: transitions per committed writer batch.
pub const WRITE_BATCH_SIZE: &str = "command_coordinator_write_batch_size";
/// Counter: writer batches retried because the database was unreachable.
pub const WRITE_RETRIES: &str = "command_coordinator_write_retries_total";
/// Writes the database refused because this host no longer owns the
/// command (another host adopted its hierarchy) or is not alive.
pub const FENCED_WRITES: &str = "command_coordinator_fenced_writes_total";
/// Hierarchies this host adopted from dead, leaving or ownerless hosts.
pub const ADOPTED_HIERARCHIES: &str = "command_coordinator_adopted_hierarchies_total";
/// Hosts this host declared dead.
pub const HOSTS_DECLARED_DEAD: &str = "command_coordinator_hosts_declared_dead_total";
/// Times this host's lease ran out (it stopped acting until it had
/// heartbeats again).
pub const LEASE_LOST: &str = "command_coordinator_lease_lost_total";
