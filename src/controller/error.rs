//! Errors of the reconcile loop, each with a low-cardinality metric label.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("Prometheus client: {0}")]
    Prometheus(#[from] crate::evidence::QueryError),
    #[error("MtlsMigration has no namespace")]
    NotNamespaced,
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.is_conflict() => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.is_forbidden() => "forbidden",
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::Serialize { .. } => "serialize",
            Error::Prometheus(_) => "prometheus_client",
            Error::NotNamespaced => "invalid_object",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
