//! The process around the controller: metrics, probes, leader election.

pub mod http;
pub mod leader;
pub mod telemetry;
