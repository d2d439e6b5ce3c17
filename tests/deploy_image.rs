//! The container image, without a container engine: the Dockerfile's build
//! stage runs `make image-binary`, the same target this test runs, so the
//! binary checked here is the one the image ships. It must be a static
//! release build that runs with nothing else around it, as on
//! distroless/static: a chroot holding only the binary and the few files
//! distroless provides, as the non-root user 65532.

mod deploy_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use deploy_support::*;
use serde_json::json;

/// The Dockerfile's stages: (FROM line, instructions).
fn stages() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("read Dockerfile");
    // Join continuation lines, drop comments.
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(trimmed);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in lines {
        if line.starts_with("FROM ") {
            out.push((line, Vec::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push(line);
        }
    }
    out
}

#[test]
fn the_dockerfile_builds_with_make_image_binary_and_runs_non_root_on_distroless() {
    let stages = stages();
    assert_eq!(
        stages.len(),
        2,
        "a build stage and a runtime stage: {stages:#?}"
    );
    let (build_from, build) = &stages[0];
    let stage_name = build_from.rsplit(" AS ").next().expect("named build stage");
    let runs: Vec<&String> = build.iter().filter(|l| l.starts_with("RUN ")).collect();
    assert!(
        runs.iter().any(|r| r.contains("make image-binary")),
        "the build stage must run `make image-binary`: {runs:?}"
    );
    assert!(
        !runs
            .iter()
            .any(|r| r.contains("cargo build") || r.contains("rustc")),
        "the build stage compiles only through `make image-binary`: {runs:?}"
    );

    let (runtime_from, runtime) = &stages[1];
    assert!(
        runtime_from.contains("distroless/static") || runtime_from.trim() == "FROM scratch",
        "{runtime_from}"
    );
    let copy = runtime
        .iter()
        .find(|l| l.starts_with("COPY "))
        .expect("runtime stage copies the binary");
    assert_eq!(
        copy,
        &format!("COPY --from={stage_name} /src/target/image/mtls-migrator /mtls-migrator")
    );
    let user = runtime
        .iter()
        .find(|l| l.starts_with("USER "))
        .expect("USER");
    let uid: u32 = user[5..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric USER");
    assert_ne!(uid, 0);
    // Pod Security restricted wants runAsNonRoot; kubelet can only verify a numeric user.
    let deployment = yaml_document(&repo().join("config/manager/deployment.yaml"));
    assert_eq!(
        deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"],
        uid
    );
    assert!(
        runtime.contains(&r#"ENTRYPOINT ["/mtls-migrator"]"#.to_string()),
        "{runtime:?}"
    );
}

#[test]
fn make_image_binary_is_a_static_release_build() {
    let out = Command::new("make")
        .args(["--no-print-directory", "-n", "image-binary"])
        .current_dir(repo())
        .output()
        .expect("run make -n image-binary");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recipe = String::from_utf8_lossy(&out.stdout);
    let build = recipe
        .lines()
        .find(|l| l.contains("cargo build"))
        .unwrap_or_else(|| panic!("no cargo build in\n{recipe}"));
    for part in [
        "RUSTFLAGS=\"-C target-feature=+crt-static\"",
        "--release",
        "--locked",
        "--target x86_64-unknown-linux-gnu",
        "--bin mtls-migrator",
    ] {
        assert!(build.contains(part), "{part} missing from: {build}");
    }
    assert!(
        recipe.lines().any(|l| l.starts_with("cp ")
            && l.contains("x86_64-unknown-linux-gnu/release/mtls-migrator")
            && l.ends_with("target/image/mtls-migrator")),
        "{recipe}"
    );
}

/// Whether an ELF executable asks for a program interpreter (a dynamic loader).
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(54), u16_at(56));
    (0..count).any(|i| {
        let at = phoff + i * size;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3 // PT_INTERP
    })
}

/// A root filesystem with what distroless/static-debian12 holds that matters
/// here (CA bundle, nsswitch.conf, passwd), plus the binary and a
/// kubeconfig, and the device nodes every container runtime provides.
/// Owned by root and not writable for the operator's user.
fn distroless_like_root(binary: &Path, kubeconfig: &Path) -> RootFs {
    let root = log_dir().join(unique("rootfs-"));
    let etc = root.join("etc");
    std::fs::create_dir_all(etc.join("ssl/certs")).unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    // A static binary cannot look up libc's getrandom(), so the getrandom
    // crate falls back to /dev/random (to wait for entropy) and
    // /dev/urandom, which every container has.
    for (node, minor) in [("null", "3"), ("random", "8"), ("urandom", "9")] {
        let status = Command::new("mknod")
            .args(["-m", "666"])
            .arg(root.join("dev").join(node))
            .args(["c", "1", minor])
            .status()
            .expect("run mknod");
        assert!(status.success(), "mknod /dev/{node}");
    }
    std::fs::copy(binary, root.join("mtls-migrator")).unwrap();
    std::fs::copy(kubeconfig, root.join("kubeconfig")).unwrap();
    std::fs::write(etc.join("hosts"), "127.0.0.1\tlocalhost\n").unwrap();
    std::fs::write(etc.join("nsswitch.conf"), "hosts: files dns\n").unwrap();
    std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n").unwrap();
    let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if bundle.exists() {
        std::fs::copy(bundle, etc.join("ssl/certs/ca-certificates.crt")).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.join("kubeconfig"),
        std::fs::Permissions::from_mode(0o444),
    )
    .unwrap();
    RootFs(root)
}

/// The chroot's folder, removed when the test ends (it holds a 20 MB binary).
struct RootFs(PathBuf);

impl Drop for RootFs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn the_image_binary_runs_alone_as_non_root() {
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "this test chroots and switches user: run it as root (CI does)"
    );
    let make = tokio::task::spawn_blocking(|| {
        Command::new("make")
            .args(["--no-print-directory", "image-binary"])
            .current_dir(repo())
            .output()
            .expect("run make image-binary")
    })
    .await
    .unwrap();
    assert!(
        make.status.success(),
        "make image-binary:\n{}",
        String::from_utf8_lossy(&make.stderr)
    );
    let binary = repo().join("target/image/mtls-migrator");
    let elf = std::fs::read(&binary).expect("read target/image/mtls-migrator");
    assert!(
        !has_interpreter(&elf),
        "the image binary needs a dynamic loader"
    );

    let sb = testkit::sandbox().await;
    let admin = sb.client().await;
    apply_default_config(sb).await;
    let ns = testkit::TestNamespace::create(&admin, "deploy-image").await;
    // Reach the API server by name, so name resolution (/etc/hosts through
    // the static libc) is exercised too; its certificate names localhost.
    let token = create_token(sb, OPERATOR_NAMESPACE, SERVICE_ACCOUNT);
    let kubeconfig = token_kubeconfig(sb, &token, &unique("deploy-image-"));
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&kubeconfig).unwrap()).unwrap();
    let server = config["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap()
        .replace("127.0.0.1", "localhost");
    config["clusters"][0]["cluster"]["server"] = json!(server);
    std::fs::write(&kubeconfig, config.to_string()).unwrap();
    let root = distroless_like_root(&binary, &kubeconfig);

    let name = format!("{}-static", ns.name());
    let mut opts = OperatorOptions::new(&name, Path::new("/kubeconfig"), ns.name());
    opts.prefix = vec![
        "chroot".into(),
        "--userspec=65532:65532".into(),
        root.0.clone().into(),
    ];
    opts.binary = Some(Path::new("/mtls-migrator"));
    let op = start_operator(opts).await;
    op.wait_ready("leader election off", Duration::from_secs(20))
        .await
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", op.pid())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "65532"),
        "{uid_line}"
    );

    create_migration(
        &admin,
        ns.name(),
        json!({"metadata": {"name": "static"}, "spec": {"mode": "PERMISSIVE"}}),
    )
    .await;
    wait_phase(
        &admin,
        ns.name(),
        "static",
        "Permissive",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(op.forbidden_lines(), Vec::<String>::new());

    drop(op);
    let _ = std::fs::remove_file(&kubeconfig);
    ns.cleanup().await;
}
