use std::time::Duration;

/// Why one Prometheus query produced no usable vector.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    #[error("invalid Prometheus URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("Prometheus did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach Prometheus: {0}")]
    Transport(String),
    #[error("Prometheus answered HTTP {status}: {detail}")]
    HttpStatus { status: u16, detail: String },
    #[error("Prometheus rejected the query ({error_type}): {error}")]
    Prometheus { error_type: String, error: String },
    #[error("Prometheus returned a {0} where an instant vector was expected")]
    NotVector(String),
    #[error("malformed Prometheus response: {0}")]
    Malformed(String),
}

impl QueryError {
    /// Low-cardinality label for an error-count metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            QueryError::InvalidUrl { .. } => "invalid_url",
            QueryError::Timeout(_) => "timeout",
            QueryError::Transport(_) => "transport",
            QueryError::HttpStatus { .. } => "http_status",
            QueryError::Prometheus { .. } => "prometheus_error",
            QueryError::NotVector(_) => "not_vector",
            QueryError::Malformed(_) => "malformed",
        }
    }
}
