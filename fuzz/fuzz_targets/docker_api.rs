#![no_main]
//! What hulld does with Docker API input before it touches any state: the
//! container, network, connect, volume create and update bodies (the
//! daemon's own parsers, then the volume plan and the process over an image
//! config), image names resolved against a store, image config blobs as a
//! registry sends them, versioned request paths, and the query strings
//! hulld reads itself (filters, signals, logs, terminal sizes, archive
//! paths).

use std::sync::OnceLock;

use axum::extract::Query;
use daemon::containers::{parse_filters, parse_signal, ResizeQuery};
use daemon::create::CreateRequest;
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

/// A container create body as hulld takes it: checked, then its volumes
/// planned and its process made over the image's config.
fn create_body(body: &[u8], name: Option<String>) {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        if let Some(name) = value.get("Image").and_then(Value::as_str) {
            image_name(name);
        }
        // Its healthcheck over the image's (here the body's own again).
        if let Ok(merged) = daemon::health::merge(&value["Healthcheck"], &value["Healthcheck"]) {
            let _ = daemon::health::HealthCheck::of(&merged);
        }
    }
    let Ok(request) = CreateRequest::parse(body, name) else {
        return;
    };
    assert!(request.memory_mib > 0 && request.cpus > 0, "{request:?}");
    if let Some(name) = &request.name {
        assert!(daemon::create::valid_name(name), "{name:?}");
    }
    let _ = daemon::volumes::plan(&request.binds, &request.mounts, &request.anonymous_volumes);
    for config in [Some(&images().config), None] {
        if let Ok(p) = process(config, &request.overrides) {
            assert!(p.argv.first().is_some_and(|a| !a.is_empty()), "{p:?}");
        }
    }
}

/// `text` as the query string of a request hulld serves.
fn query<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
    let uri: axum::http::Uri = format!("/x?{text}").parse().ok()?;
    Query::<T>::try_from_uri(&uri).ok().map(|q| q.0)
}

fn query_strings(text: &str) {
    if let Some(q) = query::<daemon::api::FiltersQuery>(text) {
        let _ = parse_filters(q.filters.as_deref());
    }
    let _ = parse_filters(Some(text));
    let _ = parse_signal(text);
    if let Some(q) = query::<ResizeQuery>(text) {
        let _ = q.size();
    }
    if let Some(q) = query::<daemon::streams::LogsQuery>(text) {
        let _ = q.selection(false);
    }
    if let Some(q) = query::<daemon::archive::ArchiveQuery>(text) {
        let _ = q.path();
    }
}

/// A request path as a client sends it, `/v1.44/...` stripped or refused.
fn request_path(text: &str) {
    let Ok(uri) = text.parse::<axum::http::Uri>() else {
        return;
    };
    let before = uri.clone();
    let mut request = axum::http::Request::builder()
        .uri(uri)
        .body(axum::body::Body::empty())
        .expect("a request of a parsed URI");
    if daemon::api::strip_version(&mut request).is_ok() {
        // Routed as the path after the version, with the same query.
        let after = request.uri();
        assert!(
            before.path().ends_with(after.path().trim_start_matches('/')),
            "{before:?} became {after:?}"
        );
        assert_eq!(before.query(), after.query(), "{before:?} became {after:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = std::str::from_utf8(rest).ok();
    match mode % 10 {
        0 => create_body(rest, None),
        1 => {
            // An image config blob from a registry, then a container of it.
            if let Ok(config) = serde_json::from_slice::<ImageConfiguration>(rest) {
                let _ = process(Some(&config), &Overrides::default());
            }
        }
        2 => {
            if let Some(name) = text {
                image_name(name);
            }
        }
        3 => {
            // The `name` query parameter with a body: the name is the part before a newline.
            let (name, body) = rest.split_at(rest.iter().position(|&b| b == b'\n').unwrap_or(0));
            create_body(body, std::str::from_utf8(name).ok().map(String::from));
        }
        4 => {
            let _ = daemon::networks::parse_create(rest);
        }
        5 => {
            let _ = daemon::networking::ConnectBody::parse(rest);
        }
        6 => {
            if let Ok(request) = daemon::volumes::VolumeRequest::parse(rest) {
                assert!(runtime::volume::valid_name(&request.name), "{:?}", request.name);
            }
        }
        7 => {
            if let Some(text) = text {
                query_strings(text);
            }
        }
        8 => {
            let _ = daemon::update::Update::parse(rest);
        }
        _ => {
            if let Some(text) = text {
                request_path(text);
            }
        }
    }
});
