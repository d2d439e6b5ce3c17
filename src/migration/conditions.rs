//! Merging conditions the Kubernetes way: `lastTransitionTime` moves only
//! when `status` changes, and every condition carries the generation it was
//! computed from (so `kubectl wait` right after a spec edit does not read a
//! stale answer).

use jiff::Timestamp;

use crate::api::conditions::{Condition, ConditionStatus};

/// Sets (or adds) the condition of `type_`, keeping its transition time when
/// the status is unchanged.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: String,
    generation: i64,
    now: Timestamp,
) {
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if existing.status != status {
            existing.last_transition_time = now;
        }
        existing.status = status;
        existing.reason = reason.to_string();
        existing.message = message;
        existing.observed_generation = Some(generation);
    } else {
        conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            last_transition_time: now,
            observed_generation: Some(generation),
        });
    }
}

/// The condition of `type_`, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when `type_` is `True` and was computed for `generation`: what
/// `kubectl wait --for=condition=<type_>` checks.
pub fn condition_holds(conditions: &[Condition], type_: &str, generation: i64) -> bool {
    find_condition(conditions, type_).is_some_and(|c| {
        c.status == ConditionStatus::True && c.observed_generation == Some(generation)
    })
}

/// Orders `conditions` as `order` lists them, anything else after, so the
/// same content always serializes the same way.
pub fn sort_conditions(conditions: &mut [Condition], order: &[&str]) {
    conditions.sort_by_key(|c| {
        order
            .iter()
            .position(|t| *t == c.type_)
            .unwrap_or(order.len())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut c = Vec::new();
        set_condition(
            &mut c,
            "Ready",
            ConditionStatus::False,
            "Holding",
            "a".into(),
            1,
            t("2025-01-01T00:00:00Z"),
        );
        set_condition(
            &mut c,
            "Ready",
            ConditionStatus::False,
            "PlaintextAboveThreshold",
            "b".into(),
            2,
            t("2025-01-01T00:01:00Z"),
        );
        assert_eq!(c[0].last_transition_time, t("2025-01-01T00:00:00Z"));
        assert_eq!(c[0].reason, "PlaintextAboveThreshold");
        assert_eq!(c[0].message, "b");
        assert_eq!(c[0].observed_generation, Some(2));
        set_condition(
            &mut c,
            "Ready",
            ConditionStatus::True,
            "Enforced",
            "c".into(),
            2,
            t("2025-01-01T00:02:00Z"),
        );
        assert_eq!(c[0].last_transition_time, t("2025-01-01T00:02:00Z"));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn holds_only_for_the_current_generation() {
        let mut c = Vec::new();
        set_condition(
            &mut c,
            "Ready",
            ConditionStatus::True,
            "Enforced",
            String::new(),
            3,
            t("2025-01-01T00:00:00Z"),
        );
        assert!(condition_holds(&c, "Ready", 3));
        assert!(!condition_holds(&c, "Ready", 4));
        assert!(!condition_holds(&c, "Degraded", 3));
    }

    #[test]
    fn sorting_puts_known_types_first_in_order() {
        let mut c = Vec::new();
        for ty in ["Custom", "Degraded", "Ready"] {
            set_condition(
                &mut c,
                ty,
                ConditionStatus::True,
                "R",
                String::new(),
                1,
                t("2025-01-01T00:00:00Z"),
            );
        }
        sort_conditions(&mut c, &["Ready", "Degraded"]);
        let order: Vec<_> = c.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(order, ["Ready", "Degraded", "Custom"]);
    }
}
