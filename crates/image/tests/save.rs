//! `husk save` archives read back by `husk load` and by Debian's skopeo
//! (`docker-archive:` and, since the archive is also an OCI layout,
//! `oci-archive:`).

mod common;

use common::*;
use husk_image::{Store, save};

fn loaded_store(dir: &std::path::Path) -> (Store, Written) {
    let layout = dir.join("layout");
    let mut spec = ImageSpec::busybox("saved");
    spec.layers.push(layer(&[
        E::Dir("srv", 0o755),
        E::File("srv/index.html", b"<h1>husk</h1>\n", 0o644),
    ]));
    let w = oci_layout(&layout, "v1", &spec);
    let store = Store::open(dir.join("store")).unwrap();
    husk_image::load_layout(&store, &layout, Some("web/app")).unwrap();
    (store, w)
}

#[test]
fn skopeo_reads_a_saved_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, w) = loaded_store(tmp.path());
    let archive = tmp.path().join("app.tar");
    save(
        &store,
        &["web/app:v1"],
        std::fs::File::create(&archive).unwrap(),
    )
    .unwrap();
    let oci = tmp.path().join("oci");
    skopeo(&[
        "copy",
        "--quiet",
        &format!("docker-archive:{}", archive.display()),
        &format!("oci:{}:copied", oci.display()),
    ]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(oci.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "copied"
    );
    // skopeo read the same image (it rewrites the config when it converts
    // to OCI, so compare contents, not bytes).
    let ours = store.resolve("web/app:v1").unwrap();
    let json = skopeo_output(&[
        "inspect",
        "--config",
        &format!("oci:{}:copied", oci.display()),
    ]);
    let theirs: serde_json::Value = serde_json::from_str(&json).unwrap();
    let diff_ids: Vec<String> = ours
        .config
        .rootfs
        .diff_ids
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(theirs["rootfs"]["diff_ids"], serde_json::json!(diff_ids));
    assert_eq!(theirs["config"]["Labels"]["test"], "saved");
    // And as an OCI archive, the manifest is ours too.
    let oci2 = tmp.path().join("oci2");
    skopeo(&[
        "copy",
        "--quiet",
        &format!("oci-archive:{}", archive.display()),
        &format!("oci:{}:again", oci2.display()),
    ]);
    assert!(oci2.join("blobs/sha256").join(w.manifest.hex()).is_file());
    // skopeo's own reading of the tags.
    let json = skopeo_output(&["inspect", &format!("docker-archive:{}", archive.display())]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["Labels"]["test"], "saved");
}

#[test]
fn save_and_load_two_images_into_a_fresh_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, w) = loaded_store(tmp.path());
    let other_layout = tmp.path().join("other");
    let w2 = oci_layout(&other_layout, "2", &ImageSpec::busybox("other"));
    husk_image::load_layout(&store, &other_layout, Some("other")).unwrap();
    let mut archive = Vec::new();
    save(&store, &["web/app:v1", "other:2"], &mut archive).unwrap();
    let fresh = Store::open(tmp.path().join("fresh")).unwrap();
    let loaded = husk_image::load(&fresh, &archive[..], None).unwrap();
    let lines: Vec<String> = loaded.iter().flat_map(|l| l.lines()).collect();
    assert_eq!(lines, ["Loaded image: web/app:v1", "Loaded image: other:2"]);
    assert_eq!(fresh.resolve("web/app:v1").unwrap().id, w.config);
    assert_eq!(fresh.resolve("other:2").unwrap().id, w2.config);
    // The layers unpack in the fresh store.
    let img = fresh.resolve("web/app:v1").unwrap();
    let rootfs = fresh
        .rootfs(&img, husk_image::UnpackLimits::default())
        .unwrap();
    assert!(rootfs.path.join("srv/index.html").is_file());
    // skopeo picks each image out of the two-image archive by name.
    let two = tmp.path().join("two.tar");
    std::fs::write(&two, &archive).unwrap();
    for (name, label) in [("web/app:v1", "saved"), ("other:2", "other")] {
        let oci = tmp.path().join(format!("oci-{label}"));
        skopeo(&[
            "copy",
            "--quiet",
            &format!("docker-archive:{}:{name}", two.display()),
            &format!("oci:{}:x", oci.display()),
        ]);
        let json = skopeo_output(&["inspect", &format!("oci:{}:x", oci.display())]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["Labels"]["test"], label);
    }
}
