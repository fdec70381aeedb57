//! Workers on the write side: each runs on the leader of a partition, reads what the log says,
//! and proposes commands through the [`Sequencer`](crate::Sequencer) like any client would.
//!
//! - [`followups`]: cross-partition follow-ups (members' chat lists in their own partitions).
//! - [`retention`]: the sweeper that expires old (or fully delivered) messages through the log.

pub mod followups;
pub mod retention;
