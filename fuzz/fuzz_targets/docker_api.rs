#![no_main]
//! What hulld does with Docker API input that lives in library code: image
//! names (the create body's `Image`, `{name}` in paths) resolved against a
//! store, the create body's process fields applied to an image config, and
//! image config blobs as a registry sends them. hulld's own parsers
//! (filters, create body, binds, networks) are private to its binary crate.

use std::sync::OnceLock;

use image::config::{process, Overrides};
use image::digest::Digest;
use image::reference::ImageRef;
use image::store::{ImageRecord, Store};
use libfuzzer_sys::fuzz_target;
use oci_spec::image::ImageConfiguration;
use serde_json::Value;

const CONFIG: &str = r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
  "config":{"Entrypoint":["/bin/sh"],"Cmd":["-c","true"],"Env":["PATH=/bin","A=b"],"WorkingDir":"/w","User":"1:1"}}"#;

struct Images {
    store: Store,
    config: ImageConfiguration,
}

/// A store holding one image, tagged `busybox:latest` and known by digest.
fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = hull_fuzz::scratch_dir().join(format!("hull-fuzz-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).expect("opening a store");
        let (id, manifest) = (Digest::of(CONFIG.as_bytes()), Digest::of(b"{}"));
        store.put_blob(&id, CONFIG.as_bytes()).expect("config blob");
        store.put_blob(&manifest, b"{}").expect("manifest blob");
        let record = ImageRecord {
            id,
            manifest: manifest.clone(),
            repo_digests: vec![format!("busybox@{manifest}")],
            layers: Vec::new(),
            diff_ids: Vec::new(),
            created: None,
            architecture: "amd64".into(),
            os: "linux".into(),
        };
        store
            .put_image(&record, &["busybox:latest".to_string()])
            .expect("recording the image");
        let config = serde_json::from_str(CONFIG).expect("the config parses");
        Images { store, config }
    })
}

fn image_name(name: &str) {
    let _ = images().store.resolve(name);
    let _ = Digest::parse(name);
    if let Ok(reference) = ImageRef::parse(name) {
        let _ = (reference.familiar_tagged(), reference.insecure_registry_allowed());
        // The name hull shows (and stores tags under) must mean the same
        // image; except, as in Docker, a Hub name whose first part looks
        // like a host (`docker.io/a.b/c`, which Hub does not allow).
        let shown = reference.to_string();
        let first = shown.split('/').next().unwrap_or_default();
        if reference.registry() == "docker.io"
            && shown.contains('/')
            && (first.contains(['.', ':']) || first == "localhost")
        {
            return;
        }
        let again = ImageRef::parse(&shown).unwrap_or_else(|e| panic!("{name:?} is shown as {shown:?}: {e}"));
        assert_eq!(again, reference, "{name:?} is shown as {shown:?}");
    }
}

fn strings(body: &Value, key: &str) -> Option<Vec<String>> {
    let items = body.get(key)?.as_array()?;
    Some(items.iter().filter_map(|v| v.as_str().map(String::from)).collect())
}

fn string(body: &Value, key: &str) -> Option<String> {
    body.get(key)?.as_str().map(String::from)
}

/// The create body's process fields over the image's config, and alone.
fn create_body(body: &Value) {
    if let Some(name) = body.get("Image").and_then(Value::as_str) {
        image_name(name);
    }
    let overrides = Overrides {
        entrypoint: strings(body, "Entrypoint").map(|e| e.into_iter().filter(|s| !s.is_empty()).collect()),
        cmd: strings(body, "Cmd").unwrap_or_default(),
        env: strings(body, "Env").unwrap_or_default(),
        workdir: string(body, "WorkingDir").filter(|w| !w.is_empty()),
        user: string(body, "User").filter(|u| !u.is_empty()),
    };
    for config in [Some(&images().config), None] {
        if let Ok(p) = process(config, &overrides) {
            assert!(p.argv.first().is_some_and(|a| !a.is_empty()), "{p:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(body) = serde_json::from_slice::<Value>(rest) {
                create_body(&body);
            }
        }
        1 => {
            // An image config blob from a registry, then a container of it.
            if let Ok(config) = serde_json::from_slice::<ImageConfiguration>(rest) {
                let _ = process(Some(&config), &Overrides::default());
            }
        }
        _ => {
            if let Ok(name) = std::str::from_utf8(rest) {
                image_name(name);
            }
        }
    }
});
