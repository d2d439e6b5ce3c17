//! The user-facing subcommands, run as the real binary.

use serde_json::Value;
use testkit::Sandbox;

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs the real binary with the sandbox's kubeconfig and none of the
/// caller's MTLS_* settings.
pub async fn cli(sb: &Sandbox, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mtls-migrator"));
    cmd.args(args).env("KUBECONFIG", sb.kubeconfig_path());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MTLS_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().await.expect("run mtls-migrator");
    Output {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
