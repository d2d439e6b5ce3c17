//! HTTP client for Prometheus' instant-query API.

use std::fmt;
use std::time::Duration;

use futures::future::join_all;

use super::error::QueryError;
use super::promql::{QueryScope, QuerySet};
use super::reading::{Answers, Sample, parse_query_response, reading_from_answers};
use crate::observe::Reading;

/// Where Prometheus is and how to talk to it.
#[derive(Clone)]
pub struct PrometheusConfig {
    /// Base URL, e.g. `http://prometheus:9090` or `https://host/prometheus`
    /// (a path prefix is kept).
    pub url: String,
    /// Limit for each query, connection included.
    pub timeout: Duration,
    /// Sent as `Authorization: Bearer ...` when set.
    pub bearer_token: Option<String>,
}

impl fmt::Debug for PrometheusConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusConfig")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[derive(Clone)]
pub struct PrometheusClient {
    http: reqwest::Client,
    query_url: reqwest::Url,
    bearer_token: Option<String>,
    timeout: Duration,
}

impl fmt::Debug for PrometheusClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusClient")
            .field("query_url", &self.query_url.as_str())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PrometheusClient {
    pub fn new(config: PrometheusConfig) -> Result<Self, QueryError> {
        let invalid = |reason: String| QueryError::InvalidUrl {
            url: config.url.clone(),
            reason,
        };
        let mut base = reqwest::Url::parse(&config.url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("scheme must be http or https".into()));
        }
        // `join` replaces the last path segment unless the base ends in '/'.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let query_url = base
            .join("api/v1/query")
            .map_err(|e| invalid(e.to_string()))?;
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()
            .map_err(|e| QueryError::Transport(error_chain(&e)))?;
        Ok(Self {
            http,
            query_url,
            bearer_token: config.bearer_token,
            timeout: config.timeout,
        })
    }

    /// The URL queries are sent to (`<base>/api/v1/query`).
    pub fn query_url(&self) -> &str {
        self.query_url.as_str()
    }

    /// One instant query evaluated at `at`.
    pub async fn query(
        &self,
        promql: &str,
        at: jiff::Timestamp,
    ) -> Result<Vec<Sample>, QueryError> {
        let time = format!("{:.3}", at.as_millisecond() as f64 / 1000.0);
        let mut request = self
            .http
            .get(self.query_url.clone())
            .query(&[("query", promql), ("time", time.as_str())]);
        if let Some(token) = &self.bearer_token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| self.map_error(&e))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| self.map_error(&e))?;
        parse_query_response(status, &body)
    }

    /// Runs every query of `queries`, all evaluated at the same instant so
    /// that the total and its parts describe the same moment.
    pub async fn answers(&self, queries: &QuerySet, at: jiff::Timestamp) -> Vec<Answers> {
        join_all(queries.protocols.iter().map(|q| async move {
            let (total, plaintext, top_sources, source_failures) = futures::join!(
                self.query(&q.total, at),
                self.query(&q.plaintext, at),
                self.query(&q.top_sources, at),
                async {
                    match &q.source_failures {
                        Some(f) => Some(self.query(f, at).await),
                        None => None,
                    }
                }
            );
            Answers {
                protocol: q.protocol,
                total,
                plaintext,
                top_sources,
                source_failures,
            }
        }))
        .await
    }

    /// One measurement of `scope` now.
    pub async fn measure(&self, scope: &QueryScope) -> Reading {
        self.measure_at(&scope.queries(), jiff::Timestamp::now())
            .await
    }

    /// One measurement evaluated at `at`.
    pub async fn measure_at(&self, queries: &QuerySet, at: jiff::Timestamp) -> Reading {
        reading_from_answers(&self.answers(queries, at).await)
    }

    fn map_error(&self, e: &reqwest::Error) -> QueryError {
        if e.is_timeout() {
            QueryError::Timeout(self.timeout)
        } else {
            QueryError::Transport(error_chain(e))
        }
    }
}

/// reqwest's top-level message ("error sending request") hides the cause
/// (connection refused, DNS, TLS); the chain names it.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{Namespaces, Protocols};
    use axum::Router;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;

    const TEN: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"10"]}]}}"#;

    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{addr}")
    }

    fn client(url: String, token: Option<&str>) -> PrometheusClient {
        client_with_timeout(url, token, Duration::from_secs(10))
    }

    fn client_with_timeout(
        url: String,
        token: Option<&str>,
        timeout: Duration,
    ) -> PrometheusClient {
        PrometheusClient::new(PrometheusConfig {
            url,
            timeout,
            bearer_token: token.map(str::to_string),
        })
        .unwrap()
    }

    fn scope() -> QueryScope {
        QueryScope {
            namespaces: Namespaces::one("shop"),
            workloads: None,
            protocols: Protocols::Http,
            window: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn success_sends_token_and_reads_traffic() {
        let router = Router::new().route(
            "/prom/api/v1/query",
            get(|headers: HeaderMap| async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
                if auth == Some("Bearer s3cret") {
                    (StatusCode::OK, TEN)
                } else {
                    (StatusCode::UNAUTHORIZED, "no token")
                }
            }),
        );
        let base = serve(router).await;
        let reading = client(format!("{base}/prom"), Some("s3cret"))
            .measure(&scope())
            .await;
        assert!(
            matches!(reading, Reading::Traffic { total_rate, .. } if total_rate == 10.0),
            "{reading:?}"
        );
        let reading = client(format!("{base}/prom"), None).measure(&scope()).await;
        assert!(
            matches!(&reading, Reading::QueryFailed { message } if message.contains("401")),
            "{reading:?}"
        );
    }

    #[tokio::test]
    async fn server_error_is_query_failed() {
        let router = Router::new().route(
            "/api/v1/query",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        );
        let base = serve(router).await;
        let reading = client(base, None).measure(&scope()).await;
        assert!(
            matches!(&reading, Reading::QueryFailed { message } if message.contains("HTTP 500")),
            "{reading:?}"
        );
    }

    #[tokio::test]
    async fn hanging_server_times_out() {
        // Answers never: only the client's timeout ends the request.
        let router =
            Router::new().route("/api/v1/query", get(std::future::pending::<&'static str>));
        let base = serve(router).await;
        let c = client_with_timeout(base, None, Duration::from_millis(300));
        let err = c.query("up", jiff::Timestamp::now()).await.unwrap_err();
        assert_eq!(err, QueryError::Timeout(Duration::from_millis(300)));
        let reading = c.measure(&scope()).await;
        assert!(
            matches!(&reading, Reading::QueryFailed { message } if message.contains("did not answer")),
            "{reading:?}"
        );
    }

    #[tokio::test]
    async fn connection_refused_is_query_failed() {
        // Bind then drop: the port is very likely closed afterwards.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let c = client(format!("http://{addr}"), None);
        let err = c.query("up", jiff::Timestamp::now()).await.unwrap_err();
        assert!(matches!(err, QueryError::Transport(_)), "{err:?}");
        assert!(matches!(
            c.measure(&scope()).await,
            Reading::QueryFailed { .. }
        ));
    }

    #[test]
    fn rejects_bad_urls_and_keeps_path_prefix() {
        let cfg = |url: &str| PrometheusConfig {
            url: url.into(),
            timeout: Duration::from_secs(1),
            bearer_token: Some("t".into()),
        };
        assert!(matches!(
            PrometheusClient::new(cfg("ftp://x")),
            Err(QueryError::InvalidUrl { .. })
        ));
        assert!(PrometheusClient::new(cfg("not a url")).is_err());
        let c = PrometheusClient::new(cfg("http://h:9090/prometheus")).unwrap();
        assert_eq!(c.query_url(), "http://h:9090/prometheus/api/v1/query");
        assert!(!format!("{:?}", cfg("http://h")).contains("\"t\""));
    }
}
