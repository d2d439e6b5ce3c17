//! Judging one Prometheus reading against the analysis thresholds.
//!
//! Only a finite, non-negative measurement of enough traffic with a small
//! enough plaintext share is a pass. Every fault has its own reason; none of
//! them is ever turned into a number (gates.md: an empty result read as 0, a
//! NaN let through, a run reported successful while every query errored).

use crate::api::conditions::{ConditionStatus, reasons};
use crate::api::migration::Analysis;
use crate::observe::{PlaintextSource, Reading};

/// What a reading says, before enrollment and conflicts are considered.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    /// The PlaintextBelowThreshold condition this reading implies: True
    /// (pass), False (too much plaintext) or Unknown (no usable number).
    pub status: ConditionStatus,
    pub reason: &'static str,
    pub message: String,
    /// Finite numbers only; `None` when the reading had none.
    pub total_rate: Option<f64>,
    pub plaintext_rate: Option<f64>,
    pub ratio: Option<f64>,
    pub source_failure_rate: Option<f64>,
    /// `Some` only for a Traffic reading (possibly empty: no plaintext).
    pub top_sources: Option<Vec<PlaintextSource>>,
}

impl Judgement {
    pub fn passed(&self) -> bool {
        self.status == ConditionStatus::True
    }

    fn without_numbers(status: ConditionStatus, reason: &'static str, message: String) -> Self {
        Judgement {
            status,
            reason,
            message,
            total_rate: None,
            plaintext_rate: None,
            ratio: None,
            source_failure_rate: None,
            top_sources: None,
        }
    }
}

/// Judges `reading` against `analysis`.
pub fn judge(reading: &Reading, analysis: &Analysis) -> Judgement {
    use ConditionStatus::{False, True, Unknown};
    match reading {
        Reading::QueryFailed { message } => Judgement::without_numbers(
            Unknown,
            reasons::METRICS_UNAVAILABLE,
            format!("Prometheus query failed: {message}. No measurement, so no progress towards STRICT."),
        ),
        Reading::NoData => Judgement::without_numbers(
            Unknown,
            reasons::NO_TELEMETRY,
            "Prometheus has no destination-reported Istio telemetry for this scope (empty result). \
             An empty result is not zero plaintext: check that the scope receives traffic and \
             that Prometheus scrapes its proxies."
                .to_string(),
        ),
        Reading::NotFinite { message } => Judgement::without_numbers(
            Unknown,
            reasons::NOT_FINITE,
            format!("Prometheus returned a value that is not a finite number ({message}); it never counts as a pass."),
        ),
        Reading::Traffic {
            total_rate,
            plaintext_rate,
            top_sources,
            source_failure_rate,
        } => {
            let (total, plaintext, failures) = (*total_rate, *plaintext_rate, *source_failure_rate);
            if let Some((name, v)) = [("total", total), ("plaintext", plaintext), ("source failure", failures)]
                .into_iter()
                .find(|(_, v)| !v.is_finite())
            {
                return Judgement::without_numbers(
                    Unknown,
                    reasons::NOT_FINITE,
                    format!("The {name} rate is {v}, not a finite number; it never counts as a pass."),
                );
            }
            if let Some((name, v)) = [("total", total), ("plaintext", plaintext), ("source failure", failures)]
                .into_iter()
                .find(|(_, v)| *v < 0.0)
            {
                return Judgement::without_numbers(
                    Unknown,
                    reasons::INVALID_MEASUREMENT,
                    format!("The {name} rate is {v}: a rate cannot be negative, so the measurement is discarded."),
                );
            }
            let sources: Vec<PlaintextSource> = top_sources
                .iter()
                .filter(|s| s.rate.is_finite() && s.rate >= 0.0)
                .cloned()
                .collect();
            let mut j = Judgement {
                status: Unknown,
                reason: reasons::INSUFFICIENT_TRAFFIC,
                message: String::new(),
                total_rate: Some(total),
                plaintext_rate: Some(plaintext),
                ratio: None,
                source_failure_rate: Some(failures),
                top_sources: Some(sources),
            };
            // Zero traffic is never a pass, whatever minRequestRate says: a
            // stopped workload or a counter that no longer moves proves nothing.
            if total == 0.0 || total < analysis.min_request_rate {
                j.message = format!(
                    "{} req/s reached the scope over the last {}, below the minimum of {} req/s: \
                     too little traffic to judge (traffic stopped, or telemetry is stale).",
                    rate(total),
                    analysis.window,
                    rate(analysis.min_request_rate)
                );
                return j;
            }
            // Total and plaintext come from two queries; a scrape between
            // them can make plaintext exceed total by a hair.
            let ratio = (plaintext / total).min(1.0);
            j.ratio = Some(ratio);
            if ratio > analysis.max_plaintext_ratio {
                j.status = False;
                j.reason = reasons::PLAINTEXT_ABOVE_THRESHOLD;
                j.message = format!(
                    "{} of {} req/s arrived without mTLS (maximum {}).{}",
                    percent(ratio),
                    rate(total),
                    percent(analysis.max_plaintext_ratio),
                    sources_sentence(j.top_sources.as_deref().unwrap_or_default())
                );
            } else {
                j.status = True;
                j.reason = reasons::BELOW_THRESHOLD;
                j.message = format!(
                    "{} of {} req/s arrived without mTLS (maximum {}).",
                    percent(ratio),
                    rate(total),
                    percent(analysis.max_plaintext_ratio)
                );
            }
            j
        }
    }
}

fn sources_sentence(sources: &[PlaintextSource]) -> String {
    if sources.is_empty() {
        return String::new();
    }
    let list: Vec<String> = sources
        .iter()
        .take(3)
        .map(|s| format!("{}/{} ({} req/s)", s.namespace, s.workload, rate(s.rate)))
        .collect();
    let unknown = if sources.iter().any(|s| s.workload == "unknown") {
        " (`unknown`: a client outside the mesh)"
    } else {
        ""
    };
    format!(" Plaintext sources: {}{unknown}.", list.join(", "))
}

/// A ratio for people and the printer column: `0%`, `12.5%`, `<0.01%`.
pub fn percent(ratio: f64) -> String {
    // `+ 0.0` turns a negative zero (0 plaintext / n) into a plain zero.
    let p = ratio * 100.0 + 0.0;
    if p > 0.0 && p < 0.01 {
        return "<0.01%".to_string();
    }
    let s = format!("{p:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

/// A rate with at most three decimals.
fn rate(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis() -> Analysis {
        Analysis {
            max_plaintext_ratio: 0.01,
            min_request_rate: 1.0,
            ..Analysis::default()
        }
    }

    fn traffic(total: f64, plaintext: f64) -> Reading {
        Reading::Traffic {
            total_rate: total,
            plaintext_rate: plaintext,
            top_sources: vec![],
            source_failure_rate: 0.0,
        }
    }

    #[test]
    fn enough_mtls_traffic_passes() {
        let j = judge(&traffic(10.0, 0.05), &analysis());
        assert!(j.passed());
        assert_eq!(j.reason, reasons::BELOW_THRESHOLD);
        assert_eq!(j.ratio, Some(0.005));
    }

    #[test]
    fn ratio_exactly_at_the_maximum_passes() {
        assert!(judge(&traffic(10.0, 0.1), &analysis()).passed());
    }

    #[test]
    fn too_much_plaintext_fails_and_names_unknown_sources() {
        let r = Reading::Traffic {
            total_rate: 10.0,
            plaintext_rate: 2.0,
            top_sources: vec![PlaintextSource {
                workload: "unknown".into(),
                namespace: "unknown".into(),
                rate: 2.0,
            }],
            source_failure_rate: 0.0,
        };
        let j = judge(&r, &analysis());
        assert_eq!(j.status, ConditionStatus::False);
        assert_eq!(j.reason, reasons::PLAINTEXT_ABOVE_THRESHOLD);
        assert!(j.message.contains("20%"), "{}", j.message);
        assert!(j.message.contains("unknown/unknown"), "{}", j.message);
        assert!(j.message.contains("outside the mesh"), "{}", j.message);
    }

    // gates.md: "Empty result read as 0 and passed" (keptn#1496) and
    // "Empty vector crashed the evaluation" (argo-rollouts#1466).
    #[test]
    fn empty_result_is_no_telemetry_not_zero() {
        let j = judge(&Reading::NoData, &analysis());
        assert!(!j.passed());
        assert_eq!(j.status, ConditionStatus::Unknown);
        assert_eq!(j.reason, reasons::NO_TELEMETRY);
        assert_eq!(j.ratio, None);
    }

    // gates.md: NaN turned into a pass (argo-rollouts#459, flagger#1098).
    #[test]
    fn nan_and_infinity_never_pass() {
        for (t, p, f) in [
            (f64::NAN, 0.0, 0.0),
            (10.0, f64::NAN, 0.0),
            (f64::INFINITY, 0.0, 0.0),
            (10.0, 0.0, f64::NEG_INFINITY),
        ] {
            let r = Reading::Traffic {
                total_rate: t,
                plaintext_rate: p,
                top_sources: vec![],
                source_failure_rate: f,
            };
            let j = judge(&r, &analysis());
            assert_eq!(j.reason, reasons::NOT_FINITE, "{t} {p} {f}");
            assert!(!j.passed());
            assert_eq!(j.total_rate, None, "non-finite numbers are never stored");
        }
        let j = judge(
            &Reading::NotFinite {
                message: "NaN".into(),
            },
            &analysis(),
        );
        assert_eq!(j.reason, reasons::NOT_FINITE);
        assert!(!j.passed());
    }

    // gates.md: a run reported Successful while every measurement errored (argo-rollouts#4479).
    #[test]
    fn a_failed_query_is_not_a_pass() {
        let j = judge(
            &Reading::QueryFailed {
                message: "connection refused".into(),
            },
            &analysis(),
        );
        assert!(!j.passed());
        assert_eq!(j.reason, reasons::METRICS_UNAVAILABLE);
        assert!(j.message.contains("connection refused"));
    }

    // gates.md: advancing went on after traffic stopped (flagger#1011); a
    // stale counter reads as a zero rate.
    #[test]
    fn zero_traffic_is_insufficient_even_with_no_minimum() {
        let a = Analysis {
            min_request_rate: 0.0,
            ..analysis()
        };
        let j = judge(&traffic(0.0, 0.0), &a);
        assert!(!j.passed());
        assert_eq!(j.reason, reasons::INSUFFICIENT_TRAFFIC);
        assert_eq!(j.ratio, None);
    }

    #[test]
    fn traffic_below_the_minimum_is_insufficient() {
        let j = judge(&traffic(0.5, 0.0), &analysis());
        assert_eq!(j.reason, reasons::INSUFFICIENT_TRAFFIC);
        assert!(j.message.contains("0.5 req/s"), "{}", j.message);
        assert!(j.message.contains("minimum of 1 req/s"), "{}", j.message);
    }

    #[test]
    fn negative_rates_are_discarded() {
        let j = judge(&traffic(10.0, -1.0), &analysis());
        assert_eq!(j.reason, reasons::INVALID_MEASUREMENT);
        assert!(!j.passed());
    }

    #[test]
    fn plaintext_above_total_is_clamped_to_one() {
        let a = Analysis {
            max_plaintext_ratio: 1.0,
            ..analysis()
        };
        let j = judge(&traffic(10.0, 10.2), &a);
        assert_eq!(j.ratio, Some(1.0));
        assert!(j.passed());
    }

    #[test]
    fn non_finite_sources_are_dropped() {
        let r = Reading::Traffic {
            total_rate: 10.0,
            plaintext_rate: 0.0,
            top_sources: vec![
                PlaintextSource {
                    workload: "a".into(),
                    namespace: "n".into(),
                    rate: f64::NAN,
                },
                PlaintextSource {
                    workload: "b".into(),
                    namespace: "n".into(),
                    rate: 0.0,
                },
            ],
            source_failure_rate: 0.0,
        };
        let j = judge(&r, &analysis());
        let names: Vec<_> = j
            .top_sources
            .unwrap()
            .into_iter()
            .map(|s| s.workload)
            .collect();
        assert_eq!(names, ["b"]);
    }

    #[test]
    fn percent_formatting() {
        assert_eq!(percent(0.0), "0%");
        assert_eq!(percent(-0.0), "0%", "no plaintext must not print as -0%");
        assert_eq!(percent(0.125), "12.5%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(0.00001), "<0.01%");
        assert_eq!(percent(0.0123), "1.23%");
    }
}
