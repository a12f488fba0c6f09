//! The deployment files: the Dockerfile (linted with hadolint, and its final stage's
//! contents proven by running the same binary unprivileged with the image's default
//! config), compose.yaml, the Kubernetes manifests and the systemd unit (parsed and checked
//! for what the README promises), and the CI workflow.

use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

use crate::support::process::{runnable_by_others, running_as_root, Running};
use crate::support::{Client, Proto};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml(rel: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Writes `text` as proxy.toml in `dir` and checks it with the library, as `usher check`.
fn check(dir: &Path, text: &str) -> usher::Config {
    let file = dir.join("proxy.toml");
    std::fs::write(&file, text).unwrap();
    usher::Config::load(&file).unwrap_or_else(|e| panic!("invalid:\n{e}"))
}

/// hadolint finds nothing to say about the Dockerfile.
#[test]
fn the_dockerfile_passes_hadolint() {
    let hadolint = repo().join("target/pyenv/bin/hadolint");
    assert!(
        hadolint.exists(),
        "no {} (./scripts/pyenv installs it)",
        hadolint.display()
    );
    let out = std::process::Command::new(&hadolint)
        .arg(repo().join("Dockerfile"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the final stage holds (the binary, the default config, public/ as /srv/www, a
/// non-root user), run here: the same binary, unprivileged, with the image's config and
/// only its addresses and paths moved into a temporary folder, serves the page over https
/// from its local CA and redirects http.
#[tokio::test]
async fn the_image_config_serves_unprivileged() {
    let dockerfile = read("Dockerfile");
    for line in [
        "COPY deploy/docker/proxy.toml /etc/usher/proxy.toml",
        "COPY --chown=65532:65532 public /srv/www",
        "USER 65532:65532",
        "EXPOSE 80 443",
        "cargo build --release --locked",
        "COPY --from=build --chown=65532:65532 /out/certs /var/lib/usher/certs",
    ] {
        assert!(dockerfile.contains(line), "Dockerfile lacks {line:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    for f in std::fs::read_dir(repo().join("public")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), www.join(f.file_name())).unwrap();
    }
    let text = read("deploy/docker/proxy.toml")
        .replace("0.0.0.0:80\"", "127.0.0.1:0\"")
        .replace("0.0.0.0:443\"", "127.0.0.1:0\"")
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace(
            "/var/lib/usher/certs",
            &dir.path().join("certs").display().to_string(),
        )
        .replace("/srv/www", &www.display().to_string());
    check(dir.path(), &text);
    // unprivileged: as nobody when the tests run as root (folders opened up for it)
    let as_nobody = running_as_root() && runnable_by_others();
    if as_nobody {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let (mut usher, at) = if as_nobody {
        Running::start_as(&dir.path().join("proxy.toml"), dir.path(), Some(65534))
    } else {
        Running::start(&dir.path().join("proxy.toml"), dir.path())
    };
    let uid = usher.uid_line();
    assert!(!uid.split_whitespace().skip(1).any(|u| u == "0"), "{uid}");
    let ca = std::fs::read_to_string(dir.path().join("certs/local-ca/root.crt")).unwrap();
    let mut c = Client::tls(at.https.unwrap(), "localhost", &ca, Proto::H1)
        .await
        .unwrap();
    let page = c.get("localhost", "/").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("usher is running"));
    let mut plain = Client::plain(at.http.unwrap(), Proto::H1).await;
    assert_eq!(plain.get("localhost", "/").await.status, 308);
    drop((c, plain));
    usher.signal("TERM");
    assert!(usher.wait_exit(crate::support::STEP).unwrap().success());
    // the access log is JSON on stdout
    let log = usher.stdout();
    let line = log
        .lines()
        .find(|l| l.contains("\"status\":200"))
        .unwrap_or_else(|| panic!("{log}"));
    serde_json::from_str::<serde_json::Value>(line).unwrap();
}

/// compose.yaml: usher built from this repo in front of a gunicorn app, a static volume
/// shared by both, certificates in a volume, and a config that passes the check.
#[test]
fn compose_puts_usher_in_front_of_gunicorn() {
    let docs = yaml("compose.yaml");
    let c = &docs[0];
    let usher = &c["services"]["usher"];
    assert_eq!(usher["build"].as_str(), Some("."));
    let ports: Vec<&str> = usher["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(ports, ["80:80", "443:443"]);
    let mounts: Vec<&str> = usher["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(mounts
        .iter()
        .any(|m| m.starts_with("usher-certs:/var/lib/usher/certs")));
    assert!(mounts.iter().any(|m| m.starts_with("static:/srv/static")));
    let app = &c["services"]["app"];
    assert!(app["command"]
        .as_str()
        .unwrap()
        .contains("gunicorn --bind 0.0.0.0:8000"));
    assert!(!c["volumes"]["static"].is_badvalue());
    // its config: static files from the volume, the rest to the app
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("static")).unwrap();
    let text = read("deploy/compose/proxy.toml").replace(
        "/srv/static",
        &dir.path().join("static").display().to_string(),
    );
    let config = check(dir.path(), &text);
    assert_eq!(config.upstreams["app"].members.len(), 1);
}

/// The Kubernetes manifests: a ConfigMap whose proxy.toml passes the check, a Deployment
/// probing the admin endpoints, non-root with resources and a drain longer than the grace
/// period, a Service without the admin port, and a PodDisruptionBudget.
#[test]
fn kubernetes_manifests_parse_and_agree() {
    let docs = yaml("deploy/kubernetes/usher.yaml");
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(k))
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let cm = kind("ConfigMap");
    let deploy = kind("Deployment");
    let svc = kind("Service");
    let pdb = kind("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"].as_i64(), Some(1));
    // the admin port open to Prometheus only
    let policy = kind("NetworkPolicy");
    let admin_rule = policy["spec"]["ingress"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|r| r["ports"][0]["port"].as_i64() == Some(9901))
        .expect("a rule for the admin port");
    assert!(!admin_rule["from"][0]["podSelector"].is_badvalue());

    // the config, with its certificate files made here
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["example.com".into(), "www.example.com".into()])
            .unwrap();
    std::fs::write(dir.path().join("tls.crt"), ck.cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), ck.key_pair.serialize_pem()).unwrap();
    let text = cm["data"]["proxy.toml"]
        .as_str()
        .unwrap()
        .replace("/etc/usher-tls", &dir.path().display().to_string());
    let config = check(dir.path(), &text);
    let admin = config.admin.expect("an admin listener for the probes");

    let pod = &deploy["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let port = |name: &str| {
        container["ports"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_i64())
    };
    assert_eq!(port("admin"), Some(i64::from(admin.port())));
    assert_eq!(port("http"), config.http.map(|a| i64::from(a.port())));
    assert_eq!(port("https"), config.https.map(|a| i64::from(a.port())));
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["port"].as_str(),
        Some("admin")
    );
    assert!(!container["resources"]["requests"]["cpu"].is_badvalue());
    assert!(!container["resources"]["limits"]["memory"].is_badvalue());
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(grace as u64 > config.grace_period.as_secs() + 5, "{grace}");
    // the writable places a read-only root needs
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert!(mounts.contains(&config.certs_dir.to_str().unwrap()));
    // the config's folder, so ConfigMap edits reach it
    assert!(mounts.contains(&"/etc/usher"));
    assert!(mounts.contains(&config.buffering.temp_dir.to_str().unwrap()));
    // the admin port stays inside the pod network
    let svc_ports: Vec<&str> = svc["spec"]["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|p| p["targetPort"].as_str())
        .collect();
    assert_eq!(svc_ports, ["http", "https"]);
}

/// The systemd unit: a dynamic user with only CAP_NET_BIND_SERVICE, hardening, reload by
/// SIGHUP after a check, a stop timeout longer than the drain. Where systemd is installed,
/// `systemd-analyze verify` finds nothing wrong and its security score is under 3.
#[test]
fn the_systemd_unit_is_unprivileged_and_hardened() {
    let unit = read("deploy/systemd/usher.service");
    for line in [
        "DynamicUser=yes",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=usher",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=40",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
    if let Ok(out) = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(repo().join("deploy/systemd/usher.service"))
        .output()
    {
        let err = String::from_utf8_lossy(&out.stderr);
        // a binary that is not installed here is expected; nothing else
        let other: Vec<&str> = err
            .lines()
            .filter(|l| !l.contains("/usr/local/bin/usher") && !l.trim().is_empty())
            .collect();
        assert!(other.is_empty(), "{err}");
        // systemd's own exposure score: 0 (locked down) to 10 (unsafe); "OK" is under 4
        let out = std::process::Command::new("systemd-analyze")
            .args(["security", "--offline=yes"])
            .arg(repo().join("deploy/systemd/usher.service"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for usher.service: ").nth(1))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no exposure score in:\n{text}"));
        assert!(score < 3.0, "exposure {score}:\n{text}");
    }
}

/// GitHub Actions runs exactly the test command `.ci/run` runs.
#[test]
fn the_github_workflow_runs_the_ci_command() {
    let ci = read(".ci/run");
    let command = ci
        .lines()
        .find_map(|l| l.strip_prefix("exec "))
        .expect("an exec line in .ci/run");
    let docs = yaml(".github/workflows/ci.yml");
    let steps = docs[0]["jobs"]["test"]["steps"].as_vec().unwrap();
    let runs: Vec<&str> = steps.iter().filter_map(|s| s["run"].as_str()).collect();
    assert!(runs.iter().any(|r| r.trim() == command), "{runs:?}");
}
