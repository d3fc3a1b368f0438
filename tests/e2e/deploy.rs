//! The deployment recipes under `deploy/`, checked offline: no cluster and no AWS
//! account are used. The Kubernetes manifests are rendered with `kustomize build` when
//! kustomize is on the PATH, else read as their kustomizations list them (resources,
//! overlays and generated ConfigMaps), and held against what the host does: its admin port and endpoints, its instance
//! name from the pod name, its stop budget, its pipeline file. The Terraform module is
//! parsed with python-hcl2, scanned with Checkov, and its IAM actions compared with
//! the list in the README.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

use crate::support::*;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The objects the kustomization in `dir` renders to: `kustomize build` when kustomize
/// is installed, else [`read_kustomization`].
fn render(dir: &Path) -> Vec<Value> {
    let Ok(built) = Command::new("kustomize").arg("build").arg(dir).output() else {
        eprintln!("kustomize is not installed: reading the kustomization's files instead");
        return read_kustomization(dir);
    };
    assert!(
        built.status.success(),
        "kustomize build {}: {}",
        dir.display(),
        String::from_utf8_lossy(&built.stderr)
    );
    documents(&String::from_utf8(built.stdout).unwrap(), dir)
}

/// Every YAML document in `text` (read from `origin`).
fn documents(text: &str, origin: &Path) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| {
            Value::deserialize(document).unwrap_or_else(|e| panic!("{}: {e}", origin.display()))
        })
        .filter(|object| !object.is_null())
        .collect()
}

/// The objects a kustomization renders to, as far as these manifests use it:
/// `resources` (files and other kustomizations) and `configMapGenerator` (without the
/// name's hash suffix, which kustomize also writes into the references).
fn read_kustomization(dir: &Path) -> Vec<Value> {
    let path = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let kustomization: Value = serde_yaml::from_str(&text).unwrap();
    let mut objects = Vec::new();
    for resource in seq(&kustomization["resources"]) {
        let resource = dir.join(resource.as_str().unwrap());
        if resource.is_dir() {
            objects.extend(read_kustomization(&resource));
        } else {
            let text = std::fs::read_to_string(&resource).unwrap();
            objects.extend(documents(&text, &resource));
        }
    }
    for generator in seq(&kustomization["configMapGenerator"]) {
        let mut data = serde_yaml::Mapping::new();
        for file in seq(&generator["files"]) {
            let file = file.as_str().unwrap();
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            data.insert(file.into(), text.into());
        }
        let mut object = serde_yaml::Mapping::new();
        object.insert("kind".into(), "ConfigMap".into());
        let mut metadata = serde_yaml::Mapping::new();
        metadata.insert("name".into(), generator["name"].clone());
        object.insert("metadata".into(), metadata.into());
        object.insert("data".into(), data.into());
        objects.push(object.into());
    }
    objects
}

use serde::Deserialize as _;

fn seq(value: &Value) -> &[Value] {
    value.as_sequence().map_or(&[], Vec::as_slice)
}

fn text(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value:?}"))
}

/// The one object of `kind`.
fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "objects of kind {kind}");
    found[0]
}

/// Whether every label of `selector` is among `labels`, and there is one at least.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_mapping().expect("a selector");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A container port given by number or by name, as a number.
fn port_number(port: &Value, container: &Value) -> u64 {
    if let Some(number) = port.as_u64() {
        return number;
    }
    let name = text(port);
    seq(&container["ports"])
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

/// The value of environment variable `name` of `container`.
fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    seq(&container["env"])
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in the container's environment"))
}

#[test]
fn the_kubernetes_statefulset_matches_what_the_host_does() {
    let objects = render(&deploy_dir().join("kubernetes/base"));
    let set = one(&objects, "StatefulSet");
    let spec = &set["spec"];
    let pod = &spec["template"];
    let labels = &pod["metadata"]["labels"];
    let container = seq(&pod["spec"]["containers"])
        .iter()
        .find(|c| c["name"] == "sluice")
        .expect("a container named sluice");

    // One group of hosts behind a headless Service, disrupted one at a time.
    let service = one(&objects, "Service");
    assert_eq!(spec["serviceName"], service["metadata"]["name"]);
    assert_eq!(service["spec"]["clusterIP"], "None", "a headless Service");
    assert!(selects(&spec["selector"]["matchLabels"], labels));
    assert!(selects(&service["spec"]["selector"], labels));
    let budget = one(&objects, "PodDisruptionBudget");
    assert!(
        selects(&budget["spec"]["selector"]["matchLabels"], labels),
        "the PodDisruptionBudget selects the StatefulSet's pods"
    );
    assert_eq!(budget["spec"]["maxUnavailable"], 1);

    // The admin endpoint: listening beyond loopback with a token (the host refuses
    // to start otherwise), probed and scraped on its port.
    let admin = text(&env(container, "SLUICE_ADMIN")["value"]);
    let admin_port: u64 = admin.rsplit_once(':').unwrap().1.parse().unwrap();
    assert!(admin.starts_with("0.0.0.0:"), "SLUICE_ADMIN {admin}");
    assert_eq!(
        env(container, "SLUICE_ADMIN_TOKEN")["valueFrom"]["secretKeyRef"]["key"],
        "admin-token"
    );
    assert_eq!(
        port_number(&"admin".into(), container),
        admin_port,
        "the container's admin port"
    );
    let readiness = &container["readinessProbe"]["httpGet"];
    assert_eq!(readiness["path"], "/ready");
    assert_eq!(port_number(&readiness["port"], container), admin_port);
    let liveness = &container["livenessProbe"]["httpGet"];
    assert_eq!(liveness["path"], "/status");
    assert_eq!(port_number(&liveness["port"], container), admin_port);
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    assert_eq!(
        text(&annotations["prometheus.io/port"]),
        admin_port.to_string()
    );
    assert_eq!(
        port_number(&seq(&service["spec"]["ports"])[0]["targetPort"], container),
        admin_port
    );

    // The exactly-once instance is the pod's name, NAME-ORDINAL, which the host
    // takes (from SLUICE_INSTANCE, and from HOSTNAME alike) for every replica.
    assert_eq!(
        env(container, "SLUICE_INSTANCE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let name = text(&set["metadata"]["name"]);
    let replicas = spec["replicas"].as_u64().unwrap();
    for ordinal in 0..replicas {
        let pod_name = format!("{name}-{ordinal}");
        assert_eq!(
            sluice_host::app::instance_id(None, Some(&pod_name)).unwrap(),
            pod_name
        );
    }

    // A graceful stop ends within the host's own deadline; the grace period covers it.
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let deadline = sluice_host::shutdown::DEADLINE.as_secs();
    assert!(
        grace >= deadline + 5,
        "terminationGracePeriodSeconds {grace} must cover the host's stop deadline ({deadline} s) with margin"
    );

    // Memory requested for a host's measured peak (84 MB), and a limit above it.
    let resources = &container["resources"];
    assert!(resources["requests"]["cpu"].is_string());
    assert!(text(&resources["requests"]["memory"]).ends_with("Mi"));
    assert!(text(&resources["limits"]["memory"]).ends_with("Gi"));

    // The pipeline file from the generated ConfigMap, at the path `--config` names.
    let args: Vec<&str> = seq(&container["args"]).iter().map(text).collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let mounts = seq(&container["volumeMounts"]);
    let volumes = seq(&pod["spec"]["volumes"]);
    let config_map_of = |mount_path: &str| -> (&Value, &Value) {
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"] == mount_path)
            .unwrap_or_else(|| panic!("nothing mounted at {mount_path}"));
        let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
        (mount, &volume["configMap"]["name"])
    };
    let (mount, pipeline_map) = config_map_of(config_path);
    let pipeline_map = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == *pipeline_map)
        .expect("the pipeline's ConfigMap");
    let pipeline = text(&pipeline_map["data"][text(&mount["subPath"])]);

    // The plugin directory is a whole ConfigMap volume (a subPath never sees updates),
    // so a new plugin arrives by the kubelet's symlink flip.
    let table: toml::Table = toml::from_str(pipeline).unwrap();
    let plugin_path = Path::new(table["plugin"]["path"].as_str().unwrap());
    let (plugin_mount, plugin_map) = config_map_of(plugin_path.parent().unwrap().to_str().unwrap());
    assert!(plugin_mount.get("subPath").is_none());
    assert_eq!(plugin_map, "sluice-plugin");

    // The pipeline file is valid (with a real plugin where the ConfigMap would be).
    let dir = workdir();
    let local = pipeline.replace(
        plugin_path.to_str().unwrap(),
        test_plugin("sluice_plugin_stats").to_str().unwrap(),
    );
    let file = write_file(dir.path(), "sluice.toml", &local);
    let validated = sluice(&["validate", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        validated.status.success(),
        "the base's pipeline file: {}",
        String::from_utf8_lossy(&validated.stderr)
    );

    // The KEDA overlay scales this StatefulSet on this pipeline's group and topic.
    let overlay = render(&deploy_dir().join("kubernetes/keda"));
    assert_eq!(
        one(&overlay, "StatefulSet"),
        set,
        "the overlay keeps the base"
    );
    let scaled = &one(&overlay, "ScaledObject")["spec"];
    assert_eq!(scaled["scaleTargetRef"]["kind"], "StatefulSet");
    assert_eq!(scaled["scaleTargetRef"]["name"], set["metadata"]["name"]);
    let trigger = &seq(&scaled["triggers"])[0];
    assert_eq!(trigger["type"], "kafka");
    let source = &table["source"];
    for (key, field) in [
        ("topic", "topic"),
        ("consumerGroup", "group_id"),
        ("bootstrapServers", "bootstrap_servers"),
    ] {
        assert_eq!(
            text(&trigger["metadata"][key]),
            source[field].as_str().unwrap(),
            "the scaler's {key}"
        );
    }
    assert!(scaled["minReplicaCount"].as_u64().unwrap() >= 1);
}

/// Every `kafka-cluster:ACTION` named in `text`.
fn kafka_actions(text: &str) -> BTreeSet<String> {
    text.split("kafka-cluster:")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_alphabetic)
                .collect::<String>()
        })
        .filter(|action| !action.is_empty())
        .collect()
}

/// Where the Terraform checkers are: `scripts/install.sh` installs them.
fn iac_tools() -> PathBuf {
    let tools = std::env::var_os("SLUICE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"))
                .join("sluice/tools")
        });
    let bin = tools.join("iac/bin");
    assert!(
        bin.join("checkov").is_file(),
        "no Checkov in {}: run scripts/install.sh (or scripts/deploy-tools.sh --iac), which installs Checkov and python-hcl2 there",
        bin.display()
    );
    bin
}

#[test]
fn the_terraform_module_grants_exactly_the_documented_kafka_actions_and_passes_checkov() {
    let module = deploy_dir().join("terraform");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&module)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "tf"))
        .collect();
    files.sort();
    let source: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();

    // The task role may do what the README says the host needs, nothing more.
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let documented = kafka_actions(&readme);
    assert!(
        documented.contains("Connect") && documented.len() > 5,
        "the README lists the MSK IAM actions: {documented:?}"
    );
    assert_eq!(kafka_actions(&source), documented);
    assert!(
        !source.contains("kafka-cluster:*"),
        "no wildcard actions in the module"
    );

    // Valid HCL, every file.
    let bin = iac_tools();
    for file in &files {
        let parsed = Command::new(bin.join("python"))
            .args(["-c", "import hcl2, sys; hcl2.load(open(sys.argv[1]))"])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            parsed.status.success(),
            "{} is not valid HCL: {}",
            file.display(),
            String::from_utf8_lossy(&parsed.stderr)
        );
    }

    // Checkov's Terraform checks, offline: none fails.
    let scanned = Command::new(bin.join("checkov"))
        .args(["--framework", "terraform", "--skip-download", "--quiet"])
        .args(["--output", "json", "--directory"])
        .arg(&module)
        .env("BC_SKIP_MAPPING", "TRUE")
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&scanned.stdout).unwrap_or_else(|e| {
        panic!(
            "Checkov's report is not JSON ({e}): {}",
            String::from_utf8_lossy(&scanned.stderr)
        )
    });
    let summary = &report["summary"];
    eprintln!("checkov: {summary}");
    let failed: BTreeMap<String, String> = report["results"]["failed_checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|check| {
            (
                format!("{} {}", check["check_id"], check["resource"]),
                check["check_name"].to_string(),
            )
        })
        .collect();
    assert!(failed.is_empty(), "Checkov findings: {failed:#?}");
    assert_eq!(summary["parsing_errors"], 0);
    assert!(summary["passed"].as_u64().unwrap() > 0, "{summary}");
    assert!(
        scanned.status.success(),
        "checkov exited {}",
        scanned.status
    );
}
