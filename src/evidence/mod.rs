//! Evidence from Prometheus: the PromQL asked for a migration's scope, the
//! HTTP client that asks it, and the strict reading of the answers into
//! [`crate::observe::Reading`].
//!
//! Faults never become numbers here: an error, an empty total, a NaN or a
//! surprise extra series each keep their own `Reading` variant so the
//! decision core can refuse to pass them and say why.

mod client;
mod error;
mod promql;
mod reading;

pub use client::{PrometheusClient, PrometheusConfig};
pub use error::QueryError;
pub use promql::{
    Namespaces, Protocol, Protocols, QueryScope, QuerySet, ScopeQueries, escape_regex,
    escape_string, promql_duration,
};
pub use reading::{Answers, Sample, parse_query_response, reading_from_answers};
