//! The Kubernetes chart (deploy/helm/switchyard) names JetStream objects that only
//! `switchyard_schemas::subject` may format: KEDA's nats-jetstream trigger watches a lane's durable
//! consumer by name, and a wrong name scales nothing. The chart encodes model names in a Helm
//! template; `ci/consumers.json` lists the names it must produce for the models its values deploy
//! (scripts/check-deploy.sh checks the rendered ScaledObjects against that file), and this test
//! checks the file against the Rust functions. No servers needed.

use std::path::PathBuf;

use switchyard_schemas::{JobKind, Lane, subject};

fn chart_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/switchyard")
}

fn read(path: &str) -> String {
    let path = chart_dir().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn consumer_names_of_the_chart_are_the_schemas_own() {
    let golden: serde_json::Value = serde_json::from_str(&read("ci/consumers.json")).expect("ci/consumers.json is JSON");
    assert_eq!(golden["stream"], subject::JOBS_STREAM, "the jobs stream KEDA reads");
    let models = golden["models"].as_array().expect("models: a list");
    assert!(!models.is_empty());
    for entry in models {
        let model = entry["model"].as_str().expect("model: a string");
        let kind = entry["kind"].as_str().expect("kind: a string");
        let kind = JobKind::ALL.into_iter().find(|k| k.as_str() == kind).unwrap_or_else(|| panic!("{model}: unknown kind {kind}"));
        let consumers = entry["consumers"].as_object().expect("consumers: an object");
        assert_eq!(consumers.len(), Lane::ALL.len(), "{model}: one consumer per lane");
        for lane in Lane::ALL {
            assert_eq!(
                consumers[lane.as_str()].as_str(),
                Some(subject::job_consumer(lane, kind, model).as_str()),
                "{model}: the {} lane's durable consumer",
                lane.as_str()
            );
        }
    }
}

#[test]
fn every_model_the_chart_values_deploy_is_in_the_golden_file() {
    // values.yaml and ci/*-values.yaml give each model as `name: <model>` beside `kind: <kind>`;
    // the golden file must list each one, or its ScaledObjects go unchecked.
    let golden = read("ci/consumers.json");
    let mut files = vec!["values.yaml".to_string()];
    for entry in std::fs::read_dir(chart_dir().join("ci")).expect("ci/") {
        let name = entry.expect("ci/ entry").file_name().into_string().expect("UTF-8 file name");
        if name.ends_with("-values.yaml") {
            files.push(format!("ci/{name}"));
        }
    }
    let mut seen = 0;
    for file in files {
        let text = read(&file);
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(name) = line.trim().strip_prefix("name: ") else { continue };
            // Only model entries: the next key of the entry is its kind.
            if !lines.get(i + 1).is_some_and(|next| next.trim().starts_with("kind: ")) {
                continue;
            }
            let name = name.split(" #").next().unwrap().trim();
            let name = name.strip_prefix('"').and_then(|n| n.strip_suffix('"')).unwrap_or(name);
            assert!(golden.contains(&serde_json::to_string(name).unwrap()), "{file}: model {name} is missing from ci/consumers.json");
            seen += 1;
        }
    }
    assert!(seen >= 4, "found only {seen} models in the chart's values");
}

#[test]
fn the_chart_template_builds_consumer_names_in_the_schemas_form() {
    // The template's own pattern, sy-<lane>-<kind>-<token>, as subject::job_consumer formats it.
    let helpers = read("templates/_helpers.tpl");
    assert!(helpers.contains(r#"printf "sy-%s-%s-%s""#), "templates/_helpers.tpl: consumer pattern");
    assert_eq!(subject::job_consumer(Lane::Batch, JobKind::Chat, "m"), "sy-batch-chat-m");
    let workers = read("templates/workers.yaml");
    assert!(workers.contains(&format!("stream: {}", subject::JOBS_STREAM)), "templates/workers.yaml: the stream KEDA reads");
}
