//! The sandbox Prometheus: registering scrape targets (file_sd) and querying.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

/// A registered file_sd target; removing the file on drop makes Prometheus
/// stop scraping it.
#[derive(Debug)]
pub struct ScrapeTarget {
    path: PathBuf,
    job: String,
}

impl ScrapeTarget {
    /// Writes `<dir>/<name>.json` atomically (tmp file + rename) so
    /// Prometheus never reads a half-written file.
    pub fn register(
        dir: &Path,
        name: &str,
        addr: SocketAddr,
        labels: &[(&str, &str)],
    ) -> std::io::Result<ScrapeTarget> {
        let mut all: BTreeMap<&str, &str> = labels.iter().copied().collect();
        all.insert("job", name);
        let body = json!([{"targets": [addr.to_string()], "labels": all}]);
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.json"));
        let tmp = dir.join(format!(".{name}.json.tmp"));
        std::fs::write(&tmp, body.to_string())?;
        std::fs::rename(&tmp, &path)?;
        Ok(ScrapeTarget {
            path,
            job: name.to_string(),
        })
    }

    /// The `job` label Prometheus gives the target's series.
    pub fn job(&self) -> &str {
        &self.job
    }
}

impl Drop for ScrapeTarget {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series labels, `__name__` included when the query keeps it.
    pub labels: BTreeMap<String, String>,
    /// The sample value.
    pub value: f64,
}

#[derive(Deserialize)]
struct Response {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct VectorItem {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// Runs an instant query. Scalars come back as one sample without labels.
pub async fn query(base_url: &str, promql: &str) -> Result<Vec<Sample>, String> {
    let url = format!("{}/api/v1/query", base_url.trim_end_matches('/'));
    let resp = reqwest::Client::new()
        .get(&url)
        .query(&[("query", promql)])
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let body: Response = resp.json().await.map_err(|e| format!("decode: {e}"))?;
    if body.status != "success" {
        return Err(body.error.unwrap_or(body.status));
    }
    let data = body.data.ok_or("no data")?;
    let parse = |v: &str| v.parse::<f64>().map_err(|e| format!("value {v}: {e}"));
    match data.result_type.as_str() {
        "vector" => {
            let items: Vec<VectorItem> =
                serde_json::from_value(data.result).map_err(|e| e.to_string())?;
            items
                .into_iter()
                .map(|i| {
                    Ok(Sample {
                        labels: i.metric,
                        value: parse(&i.value.1)?,
                    })
                })
                .collect()
        }
        "scalar" => {
            let (_, v): (f64, String) =
                serde_json::from_value(data.result).map_err(|e| e.to_string())?;
            Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: parse(&v)?,
            }])
        }
        other => Err(format!("unsupported result type {other}")),
    }
}

/// Polls `query` every 250 ms until `predicate` holds; panics after `timeout`.
pub async fn wait_for(
    base_url: &str,
    promql: &str,
    predicate: impl Fn(&[Sample]) -> bool,
    timeout: Duration,
) -> Vec<Sample> {
    let mut last = Err(String::from("never queried"));
    let got = crate::poll_until(timeout, Duration::from_millis(250), async || {
        last = query(base_url, promql).await;
        match &last {
            Ok(samples) if predicate(samples) => Some(samples.clone()),
            _ => None,
        }
    })
    .await;
    match got {
        Ok(samples) => samples,
        Err(t) => panic!("PromQL `{promql}` did not satisfy the predicate ({t}); last: {last:?}"),
    }
}
