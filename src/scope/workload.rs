//! The workload name Istio reports as `source_workload` /
//! `destination_workload` for a pod.

use k8s_openapi::api::core::v1::Pod;

/// Istio's rule, reproduced from its behaviour (pkg/kube `GetDeployMetaFromPod`):
/// the controlling owner decides. A ReplicaSet owner loses its
/// `-<pod-template-hash>` suffix (so Deployment pods report the Deployment);
/// a Job named `<cronjob>-<8..10 digits>` reports the CronJob; any other
/// controller reports its own name; a pod without a controller reports itself.
pub fn workload_name(pod: &Pod) -> String {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let Some(owner) = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    else {
        return pod_name;
    };
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let hash = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"));
            match hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
                Some(deployment) if !deployment.is_empty() => deployment.to_string(),
                _ => owner.name.clone(),
            }
        }
        "Job" => cron_job_name(&owner.name)
            .unwrap_or(&owner.name)
            .to_string(),
        _ => owner.name.clone(),
    }
}

/// CronJob-created Jobs are named `<cronjob>-<scheduled minute>`, 8 to 10 digits.
fn cron_job_name(job: &str) -> Option<&str> {
    let (prefix, suffix) = job.rsplit_once('-')?;
    let digits = suffix.len();
    ((8..=10).contains(&digits) && suffix.bytes().all(|b| b.is_ascii_digit()) && !prefix.is_empty())
        .then_some(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::fixtures::pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn owned(kind: &str, owner: &str, controller: bool, hash: Option<&str>) -> Pod {
        let mut labels = vec![("app", "x")];
        if let Some(h) = hash {
            labels.push(("pod-template-hash", h));
        }
        let mut p = pod("shop", "the-pod-xyz", &labels);
        p.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: owner.into(),
            uid: "u".into(),
            controller: Some(controller),
            block_owner_deletion: None,
        }]);
        p
    }

    #[test]
    fn deployment_pod_reports_deployment() {
        let p = owned(
            "ReplicaSet",
            "reviews-v1-5f7b9c8d4",
            true,
            Some("5f7b9c8d4"),
        );
        assert_eq!(workload_name(&p), "reviews-v1");
    }

    #[test]
    fn replicaset_without_hash_label_reports_replicaset() {
        let p = owned("ReplicaSet", "bare-rs", true, None);
        assert_eq!(workload_name(&p), "bare-rs");
        let p = owned("ReplicaSet", "bare-rs", true, Some("zzz"));
        assert_eq!(workload_name(&p), "bare-rs");
    }

    #[test]
    fn other_controllers_and_cronjobs() {
        assert_eq!(workload_name(&owned("StatefulSet", "db", true, None)), "db");
        assert_eq!(
            workload_name(&owned("Job", "backup-28999940", true, None)),
            "backup"
        );
        assert_eq!(
            workload_name(&owned("Job", "migrate-v2", true, None)),
            "migrate-v2"
        );
    }

    #[test]
    fn no_controller_reports_pod_name() {
        assert_eq!(workload_name(&pod("shop", "solo", &[])), "solo");
        let p = owned("ReplicaSet", "web-abc", false, Some("abc"));
        assert_eq!(workload_name(&p), "the-pod-xyz");
    }
}
