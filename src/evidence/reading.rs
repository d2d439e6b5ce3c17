//! Pure reading of Prometheus answers: HTTP status + body -> samples, and the
//! answers of one measurement -> [`Reading`].

use std::collections::BTreeMap;

use serde::Deserialize;

use super::error::QueryError;
use super::promql::{Protocol, TOP_SOURCES};
use crate::observe::{PlaintextSource, Reading};

/// One element of an instant vector.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default)]
    error_type: Option<String>,
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
struct VectorElement {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    // Absent for native-histogram samples, which carry `histogram` instead.
    #[serde(default)]
    value: Option<(serde_json::Value, String)>,
}

/// Longest piece of a non-JSON error body kept in a message.
const BODY_EXCERPT: usize = 200;

/// Turns one `/api/v1/query` answer into its samples. Anything other than a
/// `200` with `status: "success"` and an instant vector of float samples is
/// an error; NaN and infinities are returned as such (the caller decides).
pub fn parse_query_response(status: u16, body: &str) -> Result<Vec<Sample>, QueryError> {
    let envelope = serde_json::from_str::<Envelope>(body);
    if status != 200 {
        let detail = match &envelope {
            Ok(Envelope {
                error: Some(error),
                error_type,
                ..
            }) => format!("{}: {error}", error_type.as_deref().unwrap_or("error")),
            _ => excerpt(body),
        };
        return Err(QueryError::HttpStatus { status, detail });
    }
    let envelope =
        envelope.map_err(|e| QueryError::Malformed(format!("{e}; body: {}", excerpt(body))))?;
    if envelope.status != "success" {
        return Err(QueryError::Prometheus {
            error_type: envelope
                .error_type
                .unwrap_or_else(|| envelope.status.clone()),
            error: envelope.error.unwrap_or_default(),
        });
    }
    let data = envelope
        .data
        .ok_or_else(|| QueryError::Malformed("success without data".into()))?;
    let data: Data =
        serde_json::from_value(data).map_err(|e| QueryError::Malformed(e.to_string()))?;
    if data.result_type != "vector" {
        return Err(QueryError::NotVector(data.result_type));
    }
    let elements: Vec<VectorElement> =
        serde_json::from_value(data.result).map_err(|e| QueryError::Malformed(e.to_string()))?;
    elements
        .into_iter()
        .map(|el| {
            let (_, raw) = el.value.ok_or_else(|| {
                QueryError::Malformed(format!(
                    "sample without a float value (native histogram?) for {}",
                    label_set(&el.metric)
                ))
            })?;
            Ok(Sample {
                value: parse_sample_value(&raw)?,
                labels: el.metric,
            })
        })
        .collect()
}

/// Prometheus writes sample values as strings, including `NaN`, `+Inf` and
/// `-Inf`; spell those out rather than trusting a float parser's spelling.
fn parse_sample_value(raw: &str) -> Result<f64, QueryError> {
    match raw {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => raw
            .parse::<f64>()
            .map_err(|_| QueryError::Malformed(format!("sample value {raw:?} is not a number"))),
    }
}

fn excerpt(body: &str) -> String {
    let trimmed = body.trim();
    match trimmed.char_indices().nth(BODY_EXCERPT) {
        Some((i, _)) => format!("{}...", &trimmed[..i]),
        None if trimmed.is_empty() => "(empty body)".into(),
        None => trimmed.to_string(),
    }
}

fn label_set(labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// The answers to one protocol's [`super::ScopeQueries`], in the same shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Answers {
    pub protocol: Protocol,
    pub total: Result<Vec<Sample>, QueryError>,
    pub plaintext: Result<Vec<Sample>, QueryError>,
    pub top_sources: Result<Vec<Sample>, QueryError>,
    /// `None` when no failure query was asked (TCP).
    pub source_failures: Option<Result<Vec<Sample>, QueryError>>,
}

impl Answers {
    fn each(&self) -> Vec<(&'static str, &Result<Vec<Sample>, QueryError>)> {
        let mut out = vec![
            ("total", &self.total),
            ("plaintext", &self.plaintext),
            ("top sources", &self.top_sources),
        ];
        if let Some(f) = &self.source_failures {
            out.push(("source failures", f));
        }
        out
    }
}

/// Judges nothing, but lets nothing through unnamed. In order:
/// any failed query -> `QueryFailed`; more than one series where one sum was
/// expected -> `QueryFailed`; any NaN/Inf sample -> `NotFinite`; every total
/// empty -> `NoData`; otherwise `Traffic`, where an empty plaintext or
/// failure vector means zero (its total is present, or another protocol's is).
pub fn reading_from_answers(answers: &[Answers]) -> Reading {
    let mut failures = Vec::new();
    for a in answers {
        for (which, result) in a.each() {
            if let Err(e) = result {
                failures.push(format!("{} {which} query: {e}", a.protocol.as_str()));
            }
        }
    }
    if let Some(first) = failures.first() {
        let message = match failures.len() {
            1 => first.clone(),
            n => format!("{first} (and {} more failed queries)", n - 1),
        };
        return Reading::QueryFailed { message };
    }

    // All Ok from here; collect the vectors.
    fn ok(r: &Result<Vec<Sample>, QueryError>) -> &[Sample] {
        r.as_deref().unwrap_or(&[])
    }

    for a in answers {
        for (which, result) in a.each() {
            let samples = ok(result);
            if which != "top sources" && samples.len() > 1 {
                let sets: Vec<String> = samples.iter().map(|s| label_set(&s.labels)).collect();
                return Reading::QueryFailed {
                    message: format!(
                        "{} {which} query returned {} series where one sum was expected: {}",
                        a.protocol.as_str(),
                        samples.len(),
                        sets.join(" ")
                    ),
                };
            }
        }
    }

    for a in answers {
        for (which, result) in a.each() {
            if let Some(s) = ok(result).iter().find(|s| !s.value.is_finite()) {
                return Reading::NotFinite {
                    message: format!(
                        "{} {which} query returned {} for {}",
                        a.protocol.as_str(),
                        s.value,
                        label_set(&s.labels)
                    ),
                };
            }
        }
    }

    let single = |r: &Result<Vec<Sample>, QueryError>| ok(r).first().map(|s| s.value);
    let totals: Vec<f64> = answers.iter().filter_map(|a| single(&a.total)).collect();
    if totals.is_empty() {
        return Reading::NoData;
    }
    let total_rate = totals.iter().sum();
    let plaintext_rate = answers.iter().filter_map(|a| single(&a.plaintext)).sum();
    let source_failure_rate = answers
        .iter()
        .filter_map(|a| a.source_failures.as_ref().and_then(single))
        .sum();

    let mut by_source: BTreeMap<(String, String), f64> = BTreeMap::new();
    for a in answers {
        for s in ok(&a.top_sources) {
            let label = |k: &str| s.labels.get(k).cloned().unwrap_or_else(|| "unknown".into());
            *by_source
                .entry((label("source_workload_namespace"), label("source_workload")))
                .or_default() += s.value;
        }
    }
    let mut top_sources: Vec<PlaintextSource> = by_source
        .into_iter()
        // A series that exists but did not move in the window is not a
        // current source.
        .filter(|(_, rate)| *rate > 0.0)
        .map(|((namespace, workload), rate)| PlaintextSource {
            workload,
            namespace,
            rate,
        })
        .collect();
    // Largest first; ties in name order so status does not flap.
    top_sources.sort_by(|a, b| {
        b.rate
            .total_cmp(&a.rate)
            .then_with(|| a.namespace.cmp(&b.namespace))
            .then_with(|| a.workload.cmp(&b.workload))
    });
    top_sources.truncate(TOP_SOURCES);

    Reading::Traffic {
        total_rate,
        plaintext_rate,
        top_sources,
        source_failure_rate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(samples: &[(&[(&str, &str)], &str)]) -> String {
        let result: Vec<serde_json::Value> = samples
            .iter()
            .map(|(labels, v)| {
                let metric: serde_json::Map<String, serde_json::Value> = labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
                    .collect();
                serde_json::json!({"metric": metric, "value": [1_700_000_000.123, v]})
            })
            .collect();
        serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": result}})
            .to_string()
    }

    fn one(v: &str) -> Result<Vec<Sample>, QueryError> {
        parse_query_response(200, &vector(&[(&[], v)]))
    }

    fn empty() -> Result<Vec<Sample>, QueryError> {
        parse_query_response(200, &vector(&[]))
    }

    fn http(
        total: Result<Vec<Sample>, QueryError>,
        plaintext: Result<Vec<Sample>, QueryError>,
    ) -> Answers {
        Answers {
            protocol: Protocol::Http,
            total,
            plaintext,
            top_sources: empty(),
            source_failures: Some(empty()),
        }
    }

    #[test]
    fn parses_vector_with_labels_and_string_values() {
        let body = vector(&[(&[("source_workload", "web")], "1.5")]);
        let s = parse_query_response(200, &body).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].value, 1.5);
        assert_eq!(s[0].labels["source_workload"], "web");
    }

    #[test]
    fn parses_special_values() {
        assert!(one("NaN").unwrap()[0].value.is_nan());
        assert_eq!(one("+Inf").unwrap()[0].value, f64::INFINITY);
        assert_eq!(one("-Inf").unwrap()[0].value, f64::NEG_INFINITY);
        assert_eq!(one("1e-3").unwrap()[0].value, 0.001);
        assert!(matches!(one("abc"), Err(QueryError::Malformed(_))));
    }

    #[test]
    fn error_status_in_body_is_an_error() {
        let body = r#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#;
        assert_eq!(
            parse_query_response(200, body),
            Err(QueryError::Prometheus {
                error_type: "bad_data".into(),
                error: "parse error at char 5".into()
            })
        );
    }

    #[test]
    fn non_200_keeps_prometheus_error_text() {
        let body = r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error"}"#;
        assert_eq!(
            parse_query_response(400, body),
            Err(QueryError::HttpStatus {
                status: 400,
                detail: "bad_data: 1:5: parse error".into()
            })
        );
        let err = parse_query_response(502, "<html>bad gateway</html>").unwrap_err();
        assert_eq!(
            err,
            QueryError::HttpStatus {
                status: 502,
                detail: "<html>bad gateway</html>".into()
            }
        );
    }

    #[test]
    fn scalar_matrix_and_garbage_are_rejected() {
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1,"2"]}}"#;
        assert_eq!(
            parse_query_response(200, scalar),
            Err(QueryError::NotVector("scalar".into()))
        );
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert_eq!(
            parse_query_response(200, matrix),
            Err(QueryError::NotVector("matrix".into()))
        );
        assert!(matches!(
            parse_query_response(200, "not json"),
            Err(QueryError::Malformed(_))
        ));
        let histogram = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"histogram":[1,{}]}]}}"#;
        assert!(matches!(
            parse_query_response(200, histogram),
            Err(QueryError::Malformed(_))
        ));
    }

    #[test]
    fn traffic_with_empty_plaintext_is_zero_plaintext() {
        let r = reading_from_answers(&[http(one("10"), empty())]);
        assert_eq!(
            r,
            Reading::Traffic {
                total_rate: 10.0,
                plaintext_rate: 0.0,
                top_sources: vec![],
                source_failure_rate: 0.0
            }
        );
    }

    #[test]
    fn empty_total_is_no_data_never_zero() {
        assert_eq!(
            reading_from_answers(&[http(empty(), empty())]),
            Reading::NoData
        );
    }

    #[test]
    fn failed_query_is_query_failed() {
        let err = Err(QueryError::Timeout(std::time::Duration::from_secs(2)));
        let r = reading_from_answers(&[http(one("10"), err)]);
        match r {
            Reading::QueryFailed { message } => {
                assert!(message.contains("http plaintext query"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failure_wins_over_no_data_and_counts_the_rest() {
        let e = || Err(QueryError::Transport("connection refused".into()));
        let a = Answers {
            protocol: Protocol::Http,
            total: e(),
            plaintext: e(),
            top_sources: e(),
            source_failures: Some(e()),
        };
        match reading_from_answers(&[a]) {
            Reading::QueryFailed { message } => {
                assert!(message.contains("and 3 more"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nan_or_inf_anywhere_is_not_finite() {
        assert!(matches!(
            reading_from_answers(&[http(one("NaN"), empty())]),
            Reading::NotFinite { .. }
        ));
        assert!(matches!(
            reading_from_answers(&[http(one("5"), one("+Inf"))]),
            Reading::NotFinite { .. }
        ));
        let mut a = http(one("5"), one("1"));
        a.top_sources = parse_query_response(200, &vector(&[(&[("source_workload", "x")], "NaN")]));
        assert!(matches!(
            reading_from_answers(&[a]),
            Reading::NotFinite { .. }
        ));
    }

    #[test]
    fn several_series_for_a_sum_is_query_failed_not_last_wins() {
        let two = parse_query_response(
            200,
            &vector(&[(&[("pod", "a")], "1"), (&[("pod", "b")], "2")]),
        );
        match reading_from_answers(&[http(two, empty())]) {
            Reading::QueryFailed { message } => {
                assert!(message.contains("2 series"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn protocols_add_up_and_one_empty_protocol_is_fine() {
        let tcp = Answers {
            protocol: Protocol::Tcp,
            total: empty(),
            plaintext: empty(),
            top_sources: empty(),
            source_failures: None,
        };
        let mut h = http(one("4"), one("1"));
        h.source_failures = Some(one("0.5"));
        let r = reading_from_answers(&[h.clone(), tcp]);
        assert_eq!(
            r,
            Reading::Traffic {
                total_rate: 4.0,
                plaintext_rate: 1.0,
                top_sources: vec![],
                source_failure_rate: 0.5
            }
        );
        let tcp = Answers {
            protocol: Protocol::Tcp,
            total: one("6"),
            plaintext: one("2"),
            top_sources: empty(),
            source_failures: None,
        };
        match reading_from_answers(&[h, tcp]) {
            Reading::Traffic {
                total_rate,
                plaintext_rate,
                ..
            } => assert_eq!((total_rate, plaintext_rate), (10.0, 3.0)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn top_sources_merge_sort_and_name_unknown() {
        let src =
            |ns: &'static str, wl: &'static str, v: &'static str| -> (Vec<(&str, &str)>, &str) {
                (
                    vec![("source_workload_namespace", ns), ("source_workload", wl)],
                    v,
                )
            };
        let h_samples = [
            src("shop", "web", "1"),
            src("unknown", "unknown", "3"),
            src("shop", "idle", "0"),
        ];
        let t_samples = [src("shop", "web", "2.5")];
        let as_body = |s: &[(Vec<(&str, &str)>, &str)]| {
            let v: Vec<(&[(&str, &str)], &str)> =
                s.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
            vector(&v)
        };
        let mut h = http(one("10"), one("6.5"));
        h.top_sources = parse_query_response(200, &as_body(&h_samples));
        let t = Answers {
            protocol: Protocol::Tcp,
            total: one("1"),
            plaintext: one("0"),
            top_sources: parse_query_response(200, &as_body(&t_samples)),
            source_failures: None,
        };
        // A series without source labels is reported as unknown.
        let mut h2 = h.clone();
        h2.top_sources = parse_query_response(200, &vector(&[(&[], "2")]));

        let Reading::Traffic { top_sources, .. } = reading_from_answers(&[h, t]) else {
            panic!("expected traffic")
        };
        let got: Vec<(&str, &str, f64)> = top_sources
            .iter()
            .map(|s| (s.namespace.as_str(), s.workload.as_str(), s.rate))
            .collect();
        assert_eq!(got, vec![("shop", "web", 3.5), ("unknown", "unknown", 3.0)]);

        let Reading::Traffic { top_sources, .. } = reading_from_answers(&[h2]) else {
            panic!("expected traffic")
        };
        assert_eq!(top_sources[0].workload, "unknown");
        assert_eq!(top_sources[0].namespace, "unknown");
    }
}
