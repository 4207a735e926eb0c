//! bundle.yaml deploys the four charms from ./build/ and every relation it declares joins
//! a provider and a requirer of the same interface, as the charms' charmcraft.yaml declare.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use serde_yaml_ng::Value;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn load(p: &Path) -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// (role, interface) of `endpoint` in `charm`'s charmcraft.yaml.
fn endpoint(charm: &str, endpoint: &str) -> (&'static str, String) {
    let c = load(&root().join(format!("charms/{charm}/charmcraft.yaml")));
    for role in ["provides", "requires"] {
        if let Some(e) = c.get(role).and_then(|r| r.get(endpoint)) {
            return (role, e["interface"].as_str().unwrap().to_string());
        }
    }
    panic!("{charm} has no endpoint {endpoint}");
}

#[test]
fn bundle_matches_the_charms() {
    let b = load(&root().join("bundle.yaml"));
    let apps = b["applications"].as_mapping().unwrap();
    assert_eq!(apps.len(), 4);
    for (name, app) in apps {
        let name = name.as_str().unwrap();
        assert_eq!(app["charm"], format!("./build/{name}.charm").as_str());
        let c = load(&root().join(format!("charms/{name}/charmcraft.yaml")));
        assert_eq!(c["name"], name);
        for (k, _) in app
            .get("options")
            .and_then(Value::as_mapping)
            .into_iter()
            .flatten()
        {
            assert!(
                c["config"]["options"].get(k).is_some(),
                "{name} has no option {k:?}"
            );
        }
    }
    for rel in b["relations"].as_sequence().unwrap() {
        let ends: Vec<(&str, &str)> = rel
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().split_once(':').unwrap())
            .collect();
        let (a, b) = (
            endpoint(ends[0].0, ends[0].1),
            endpoint(ends[1].0, ends[1].1),
        );
        assert_eq!(a.1, b.1, "{rel:?}: interfaces differ");
        assert_ne!(a.0, b.0, "{rel:?}: needs a provider and a requirer");
    }
}
