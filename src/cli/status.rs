//! `mtls-migrator status`: every MtlsMigration with its phase, mode,
//! evidence and what it waits for, like `kubectl get` but with the reason
//! spelled out.
//!
//! Formatting is a pure function of the listed objects and the clock, so it
//! is tested without a cluster; `run` only fetches and prints.

use anyhow::Context;
use jiff::Timestamp;
use kube::api::{Api, ListParams};
use serde::Serialize;

use super::{OutputFormat, StatusArgs};
use crate::api::MtlsMigration;
use crate::api::conditions::{ConditionStatus, types};

/// Longest WAITING FOR cell in the table; `-o json` keeps the whole message.
const WAITING_WIDTH: usize = 72;

/// One line of the table (and one element of the `-o json` array).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusRow {
    pub namespace: String,
    pub name: String,
    /// `None` until the operator has written a status.
    pub phase: Option<String>,
    pub mode: String,
    /// Plaintext share at the latest measurement (`0%`, `12.5%`).
    pub plaintext: Option<String>,
    /// Enrolled / selected pods (`3/4`).
    pub enrolled: Option<String>,
    /// What stands between the migration and its desired state, for a
    /// person; `None` when the desired state is in force.
    pub waiting_for: Option<String>,
    /// The Ready condition's reason (stable, for scripts).
    pub reason: Option<String>,
    pub created: Option<Timestamp>,
    /// Age at the time of listing, as kubectl prints it.
    pub age: String,
}

impl StatusRow {
    pub fn from_migration(m: &MtlsMigration, now: Timestamp) -> StatusRow {
        let status = m.status.as_ref();
        let ready = status.and_then(|s| s.conditions.iter().find(|c| c.type_ == types::READY));
        let generation = m.metadata.generation;
        let observed = status.and_then(|s| s.observed_generation);

        let waiting_for = match (status, ready) {
            (None, _) => Some("the operator: no status yet (is it running?)".to_string()),
            // Conditions describe an older spec: say so rather than show stale reasons.
            _ if generation.is_some() && observed.is_some() && observed < generation => {
                Some(format!(
                    "the operator to act on the latest spec (generation {}, status is for {})",
                    generation.unwrap_or_default(),
                    observed.unwrap_or_default()
                ))
            }
            (Some(_), None) => Some("the operator: no Ready condition yet".to_string()),
            (Some(_), Some(c)) if c.status == ConditionStatus::True => None,
            (Some(_), Some(c)) if c.message.trim().is_empty() => Some(c.reason.clone()),
            (Some(_), Some(c)) => Some(c.message.trim().to_string()),
        };

        let enrolled = status.and_then(|s| {
            s.enrolled.clone().or_else(|| {
                s.enrollment
                    .as_ref()
                    .map(|e| format!("{}/{}", e.enrolled, e.selected))
            })
        });
        let plaintext = status.and_then(|s| {
            s.plaintext_ratio.clone().or_else(|| {
                s.last_measurement
                    .as_ref()
                    .and_then(|m| m.ratio)
                    .map(percent)
            })
        });
        let created = m.metadata.creation_timestamp.as_ref().map(|t| t.0);

        StatusRow {
            namespace: m.metadata.namespace.clone().unwrap_or_default(),
            name: m.metadata.name.clone().unwrap_or_default(),
            phase: status.and_then(|s| s.phase).map(|p| p.as_str().to_string()),
            mode: m.spec.mode.as_str().to_string(),
            plaintext,
            enrolled,
            waiting_for,
            reason: ready.map(|c| c.reason.clone()),
            created,
            age: created.map_or_else(|| "-".to_string(), |t| human_age(now, t)),
        }
    }
}

/// Rows sorted by namespace, then name.
pub fn rows(migrations: &[MtlsMigration], now: Timestamp) -> Vec<StatusRow> {
    let mut rows: Vec<StatusRow> = migrations
        .iter()
        .map(|m| StatusRow::from_migration(m, now))
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    rows
}

/// The whole output of `status`, newline-terminated.
/// `namespace` is the `-n` filter, for the empty-list message.
pub fn render(
    migrations: &[MtlsMigration],
    format: OutputFormat,
    namespace: Option<&str>,
    now: Timestamp,
) -> String {
    let rows = rows(migrations, now);
    match format {
        OutputFormat::Json => {
            let mut out =
                serde_json::to_string_pretty(&rows).expect("status rows always serialize");
            out.push('\n');
            out
        }
        OutputFormat::Table if rows.is_empty() => match namespace {
            Some(ns) => format!("No MtlsMigrations found in namespace {ns}.\n"),
            None => "No MtlsMigrations found.\n".to_string(),
        },
        OutputFormat::Table => table(&rows),
    }
}

fn table(rows: &[StatusRow]) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    let mut cells: Vec<[String; 8]> = vec![[
        "NAMESPACE".into(),
        "NAME".into(),
        "PHASE".into(),
        "MODE".into(),
        "PLAINTEXT".into(),
        "ENROLLED".into(),
        "WAITING FOR".into(),
        "AGE".into(),
    ]];
    for r in rows {
        cells.push([
            r.namespace.clone(),
            r.name.clone(),
            dash(&r.phase),
            r.mode.clone(),
            dash(&r.plaintext),
            dash(&r.enrolled),
            r.waiting_for
                .as_deref()
                .map_or_else(|| "-".to_string(), |w| shorten(w, WAITING_WIDTH)),
            r.age.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &cells {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `0.125` -> `12.5%`, as the operator writes `status.plaintextRatio`.
fn percent(ratio: f64) -> String {
    let p = ratio * 100.0;
    let text = format!("{p:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// The first sentence of `message`, cut to `max` characters with an ellipsis.
pub fn shorten(message: &str, max: usize) -> String {
    let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let first = match one_line.find(". ") {
        Some(i) => &one_line[..i],
        None => one_line.trim_end_matches('.'),
    };
    if first.chars().count() <= max {
        return first.to_string();
    }
    let cut: String = first.chars().take(max.saturating_sub(1)).collect();
    // Cut at a word boundary when one is near, so words are not split.
    let cut = match cut.rfind(' ') {
        Some(i) if i > max / 2 => &cut[..i],
        _ => cut.as_str(),
    };
    format!("{}…", cut.trim_end_matches([',', ';', ':', ' ']))
}

/// Age the way kubectl prints it: precise when young, coarse when old
/// (`45s`, `3m20s`, `42m`, `5h10m`, `30h`, `3d4h`, `12d`, `2y40d`).
pub fn human_age(now: Timestamp, then: Timestamp) -> String {
    let secs = now.as_second().saturating_sub(then.as_second()).max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        match secs % 60 {
            0 => format!("{m}m"),
            s => format!("{m}m{s}s"),
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            mm => format!("{h}h{mm}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        match h % 24 {
            0 => format!("{d}d"),
            hh => format!("{d}d{hh}h"),
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        match d % 365 {
            0 => format!("{}y", d / 365),
            dd => format!("{}y{dd}d", d / 365),
        }
    } else {
        format!("{}y", d / 365)
    }
}

/// Lists migrations (all namespaces unless `-n`) with the kubeconfig's
/// credentials and prints them.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (KUBECONFIG, ~/.kube/config or in-cluster)")?;
    let api: Api<MtlsMigration> = match &args.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let list = api.list(&ListParams::default()).await.map_err(|e| {
        let hint = match &e {
            kube::Error::Api(s) if s.is_not_found() => {
                " (is the MtlsMigration CRD installed? `mtls-migrator crd | kubectl apply -f -`)"
            }
            _ => "",
        };
        anyhow::anyhow!("listing MtlsMigrations: {e}{hint}")
    })?;
    print!(
        "{}",
        render(
            &list.items,
            args.output,
            args.namespace.as_deref(),
            Timestamp::now()
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::Condition;
    use crate::api::{MtlsMigrationSpec, MtlsMigrationStatus, MtlsMode, Phase};
    use crate::observe::EnrollmentSummary;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn migration(ns: &str, name: &str, status: Option<MtlsMigrationStatus>) -> MtlsMigration {
        let spec: MtlsMigrationSpec =
            serde_json::from_value(serde_json::json!({"mode": "STRICT"})).unwrap();
        let mut m = MtlsMigration::new(name, spec);
        m.metadata.namespace = Some(ns.into());
        m.metadata.generation = Some(1);
        m.metadata.creation_timestamp = Some(Time(ts("2025-01-01T00:00:00Z")));
        m.status = status;
        m
    }

    fn ready(status: ConditionStatus, reason: &str, message: &str) -> Condition {
        Condition {
            type_: types::READY.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            last_transition_time: ts("2025-01-01T00:00:00Z"),
            observed_generation: Some(1),
        }
    }

    fn observing() -> MtlsMigrationStatus {
        MtlsMigrationStatus {
            observed_generation: Some(1),
            phase: Some(Phase::Observing),
            conditions: vec![ready(
                ConditionStatus::False,
                "PlaintextAboveThreshold",
                "12.5% of requests to the scope are plaintext (max 0%). Top source: \
                 shop/legacy-client at 1.2/s.",
            )],
            plaintext_ratio: Some("12.5%".into()),
            enrolled: Some("3/4".into()),
            ..Default::default()
        }
    }

    const NOW: &str = "2025-01-01T00:42:00Z";

    #[test]
    fn table_has_a_row_per_migration_sorted_and_aligned() {
        let enforced = MtlsMigrationStatus {
            observed_generation: Some(1),
            phase: Some(Phase::Enforced),
            conditions: vec![ready(
                ConditionStatus::True,
                "Enforced",
                "STRICT is applied.",
            )],
            plaintext_ratio: Some("0%".into()),
            enrolled: Some("4/4".into()),
            ..Default::default()
        };
        let list = vec![
            migration("shop", "web", Some(observing())),
            migration("bank", "api", Some(enforced)),
        ];
        let out = render(&list, OutputFormat::Table, None, ts(NOW));
        let expected = "\
NAMESPACE   NAME   PHASE       MODE     PLAINTEXT   ENROLLED   WAITING FOR                                             AGE
bank        api    Enforced    STRICT   0%          4/4        -                                                       42m
shop        web    Observing   STRICT   12.5%       3/4        12.5% of requests to the scope are plaintext (max 0%)   42m
";
        assert_eq!(out, expected);
    }

    #[test]
    fn json_is_an_array_of_the_same_rows_with_full_messages() {
        let list = vec![migration("shop", "web", Some(observing()))];
        let out = render(&list, OutputFormat::Json, None, ts(NOW));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let row = &v.as_array().unwrap()[0];
        assert_eq!(row["namespace"], "shop");
        assert_eq!(row["name"], "web");
        assert_eq!(row["phase"], "Observing");
        assert_eq!(row["mode"], "STRICT");
        assert_eq!(row["plaintext"], "12.5%");
        assert_eq!(row["enrolled"], "3/4");
        assert_eq!(row["reason"], "PlaintextAboveThreshold");
        assert!(
            row["waitingFor"]
                .as_str()
                .unwrap()
                .ends_with("shop/legacy-client at 1.2/s.")
        );
        assert_eq!(row["age"], "42m");
        assert_eq!(row["created"], "2025-01-01T00:00:00Z");
        assert_eq!(render(&[], OutputFormat::Json, None, ts(NOW)).trim(), "[]");
    }

    #[test]
    fn missing_status_and_stale_status_say_what_they_wait_for() {
        let fresh = migration("shop", "new", None);
        let r = StatusRow::from_migration(&fresh, ts(NOW));
        assert_eq!(r.phase, None);
        assert!(r.waiting_for.unwrap().contains("no status yet"));

        let mut stale = migration("shop", "edited", Some(observing()));
        stale.metadata.generation = Some(2);
        let r = StatusRow::from_migration(&stale, ts(NOW));
        assert!(
            r.waiting_for
                .unwrap()
                .contains("generation 2, status is for 1"),
            "stale conditions are not shown as current"
        );

        let no_ready = MtlsMigrationStatus {
            observed_generation: Some(1),
            phase: Some(Phase::Observing),
            ..Default::default()
        };
        let r = StatusRow::from_migration(&migration("a", "b", Some(no_ready)), ts(NOW));
        assert!(r.waiting_for.unwrap().contains("no Ready condition"));
        assert_eq!(r.plaintext, None);
        assert_eq!(r.enrolled, None);
    }

    #[test]
    fn falls_back_to_structured_status_fields() {
        let status = MtlsMigrationStatus {
            observed_generation: Some(1),
            phase: Some(Phase::Blocked),
            conditions: vec![ready(ConditionStatus::False, "AmbiguousPolicy", "")],
            enrollment: Some(EnrollmentSummary {
                selected: 5,
                enrolled: 2,
                not_enrolled: vec![],
            }),
            last_measurement: Some(crate::api::Measurement {
                time: ts(NOW),
                passed: false,
                reason: "PlaintextAboveThreshold".into(),
                message: String::new(),
                total_rate: Some(8.0),
                plaintext_rate: Some(1.0),
                ratio: Some(0.125),
                source_failure_rate: None,
            }),
            ..Default::default()
        };
        let r = StatusRow::from_migration(&migration("a", "b", Some(status)), ts(NOW));
        assert_eq!(r.enrolled.as_deref(), Some("2/5"));
        assert_eq!(r.plaintext.as_deref(), Some("12.5%"));
        // An empty message still says something.
        assert_eq!(r.waiting_for.as_deref(), Some("AmbiguousPolicy"));
    }

    #[test]
    fn empty_list_says_so() {
        assert_eq!(
            render(&[], OutputFormat::Table, Some("shop"), ts(NOW)),
            "No MtlsMigrations found in namespace shop.\n"
        );
        assert_eq!(
            render(&[], OutputFormat::Table, None, ts(NOW)),
            "No MtlsMigrations found.\n"
        );
    }

    #[test]
    fn long_messages_are_cut_at_a_word() {
        let msg = "2 of 5 selected pods have no sidecar and no ambient redirection (first: \
                   shop/web-abc, shop/web-def), so STRICT would not protect them";
        let s = shorten(msg, 40);
        assert!(s.chars().count() <= 40, "{s}");
        assert!(s.ends_with('…'));
        assert_eq!(s, "2 of 5 selected pods have no sidecar…");
        assert_eq!(shorten("One. Two.", 40), "One");
        assert_eq!(shorten("Short.", 40), "Short");
        assert_eq!(shorten("multi\n  line", 40), "multi line");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let t0 = ts("2025-01-01T00:00:00Z");
        let at = |secs: i64| human_age(Timestamp::from_second(t0.as_second() + secs).unwrap(), t0);
        assert_eq!(at(45), "45s");
        assert_eq!(at(200), "3m20s");
        assert_eq!(at(42 * 60), "42m");
        assert_eq!(at(5 * 3600 + 600), "5h10m");
        assert_eq!(at(30 * 3600), "30h");
        assert_eq!(at(3 * 86_400 + 4 * 3600), "3d4h");
        assert_eq!(at(12 * 86_400), "12d");
        assert_eq!(at(-5), "0s");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(0.0333), "3.33%");
    }

    #[test]
    fn mode_is_the_spec_mode() {
        let mut m = migration("a", "b", None);
        m.spec.mode = MtlsMode::PERMISSIVE;
        assert_eq!(StatusRow::from_migration(&m, ts(NOW)).mode, "PERMISSIVE");
    }
}
