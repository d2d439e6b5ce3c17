//! The pure decision core of a migration.
//!
//! [`decide`] takes the migration (spec, generation, previous status), what
//! the IO layers observed ([`Observed`]: the governing PeerAuthentication,
//! enrollment, DestinationRule conflicts, and this round's Prometheus
//! reading if one was due) and the clock, and returns a [`Decision`]: the
//! PeerAuthentication to apply, the new status, events, and when to look
//! again. [`measurement_due`] tells the controller when to ask Prometheus;
//! [`on_delete`] what to do with the policy when the migration goes away.
//!
//! Nothing here does IO or reads a clock, so every rule is unit-tested with
//! a clock the test moves.

pub mod conditions;
mod decide;
pub mod judge;
pub mod policy;

pub use decide::{Decision, EventNote, Observed, decide, measurement_due};
pub use policy::{DeleteAction, PolicyApply, on_delete};

#[cfg(test)]
mod tests;
