//! `load` of docker-save tars and OCI archives (written by Debian's skopeo), then
//! images / inspect / rmi / rootfs.

mod common;

use common::*;
use husk_image::{Store, UnpackLimits};

fn layout_with_two_layers(dir: &std::path::Path, tag: &str) -> Written {
    let mut spec = ImageSpec::busybox("loaded");
    spec.layers.push(layer(&[
        E::Dir("srv", 0o755),
        E::File("srv/index.html", b"<h1>husk</h1>\n", 0o644),
        E::Hardlink("srv/copy.html", "srv/index.html"),
    ]));
    spec.entrypoint = Some(vec!["/bin/busybox".into()]);
    spec.cmd = vec!["httpd".into(), "-f".into()];
    spec.workdir = Some("/srv".into());
    spec.user = Some("nobody".into());
    oci_layout(dir, tag, &spec)
}

#[test]
fn load_docker_save_tar_then_images_inspect_run_spec_rmi() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let w = layout_with_two_layers(&layout, "v1");
    let archive = tmp.path().join("save.tar");
    skopeo(&[
        "copy",
        "--quiet",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker-archive:{}:web/server:1.0", archive.display()),
    ]);
    let store = Store::open(tmp.path().join("store")).unwrap();
    let loaded = husk_image::load(&store, std::fs::File::open(&archive).unwrap(), None).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].lines(), ["Loaded image: web/server:1.0"]);
    assert_eq!(loaded[0].id, w.config, "image id is the config digest");

    // The same archive gzip-compressed (`docker save | gzip`) loads too, as a second name.
    let gz = gzip(&std::fs::read(&archive).unwrap());
    let again = husk_image::load(&store, &gz[..], None).unwrap();
    assert_eq!(again[0].id, w.config);

    let rows = store.images().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].repository.as_str(), rows[0].tag.as_str()),
        ("web/server", "1.0")
    );
    assert_eq!(rows[0].id, w.config);

    let inspect = store.inspect("web/server:1.0").unwrap();
    let i = &inspect[0];
    assert_eq!(i["Id"], w.config.to_string());
    assert_eq!(i["RepoTags"][0], "web/server:1.0");
    assert_eq!(i["Config"]["Entrypoint"][0], "/bin/busybox");
    assert_eq!(i["Config"]["WorkingDir"], "/srv");
    assert_eq!(i["Architecture"], "amd64");
    assert_eq!(i["Os"], "linux");
    assert_eq!(i["RootFS"]["Layers"].as_array().unwrap().len(), 2);
    // By short id too.
    assert_eq!(
        store.inspect(&w.config.hex()[..12]).unwrap()[0]["Id"],
        i["Id"]
    );

    let img = store.resolve("web/server:1.0").unwrap();
    let rootfs = store.rootfs(&img, UnpackLimits::default()).unwrap();
    assert_eq!(
        std::fs::read(rootfs.path.join("srv/copy.html")).unwrap(),
        b"<h1>husk</h1>\n"
    );
    // Unpacked once: a second call gives the same directory.
    let again = store.rootfs(&img, UnpackLimits::default()).unwrap();
    assert_eq!(again.path, rootfs.path);
    let spec = husk_image::resolve_process(
        &img.config,
        Some(&rootfs.path),
        &husk_image::RunOverrides {
            cmd: vec!["echo".into(), "hi".into()],
            env: vec!["GREETING=hello".into()],
            ..Default::default()
        },
        &|_| None,
    )
    .unwrap();
    assert_eq!(spec.args, ["/bin/busybox", "echo", "hi"]);
    assert_eq!(spec.cwd, "/srv");
    assert_eq!((spec.user.uid, spec.user.gid), (65534, 65534));
    assert!(spec.env.contains(&"GREETING=hello".to_string()));
    assert!(spec.env.contains(&"HOME=/nonexistent".to_string()));
    drop((rootfs, again));

    // Tag, then rmi by name untags; rmi of the last name deletes and collects blobs.
    let err = store.tag("web/server:1.0", "Web/Server").unwrap_err();
    assert!(
        err.to_string().starts_with("invalid reference format"),
        "{err}"
    );
    store.tag("web/server:1.0", "web/server:latest").unwrap();
    assert_eq!(store.images().unwrap().len(), 2);
    assert_eq!(
        store.remove("web/server:latest", false).unwrap(),
        ["Untagged: web/server:latest"]
    );
    let out = store.remove("web/server:1.0", false).unwrap();
    assert_eq!(
        out,
        [
            "Untagged: web/server:1.0".to_string(),
            format!("Deleted: {}", w.config)
        ]
    );
    assert!(store.images().unwrap().is_empty());
    assert!(!store.has_blob(&w.config));
    assert!(!store.has_blob(&w.layers[0]));
    let leftover: Vec<_> = std::fs::read_dir(store.root().join("rootfs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(leftover.is_empty(), "rootfs collected: {leftover:?}");
    let err = store.remove("web/server:1.0", false).unwrap_err();
    assert_eq!(err.to_string(), "No such image: web/server:1.0");
}

#[test]
fn load_oci_archive_and_layout_then_images() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let w = layout_with_two_layers(&layout, "v1");
    let archive = tmp.path().join("oci.tar");
    skopeo(&[
        "copy",
        "--quiet",
        &format!("oci:{}:v1", layout.display()),
        &format!(
            "oci-archive:{}:registry.example/team/app:2.0",
            archive.display()
        ),
    ]);
    let store = Store::open(tmp.path().join("store")).unwrap();
    let loaded = husk_image::load(&store, std::fs::File::open(&archive).unwrap(), None).unwrap();
    assert_eq!(
        loaded[0].lines(),
        ["Loaded image: registry.example/team/app:2.0"]
    );
    assert_eq!(loaded[0].id, w.config);

    // A layout whose ref.name is only a tag: named by the caller.
    let loaded = husk_image::load_layout(&store, &layout, Some("local/app")).unwrap();
    assert_eq!(loaded[0].lines(), ["Loaded image: local/app:v1"]);
    // Without a name it stays unnamed.
    let store2 = Store::open(tmp.path().join("store2")).unwrap();
    let loaded = husk_image::load_layout(&store2, &layout, None).unwrap();
    assert_eq!(
        loaded[0].lines(),
        [format!("Loaded image ID: {}", w.config)]
    );
    assert_eq!(store2.images().unwrap()[0].repository, "<none>");

    let mut rows: Vec<(String, String)> = store
        .images()
        .unwrap()
        .into_iter()
        .map(|r| (r.repository, r.tag))
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            ("local/app".to_string(), "v1".to_string()),
            ("registry.example/team/app".to_string(), "2.0".to_string()),
        ]
    );
    // One image with two names: rmi by id needs force.
    let err = store.remove(&w.config.to_string(), false).unwrap_err();
    assert!(err.to_string().contains("must be forced"), "{err}");
    let out = store.remove(&w.config.to_string(), true).unwrap();
    assert!(out.contains(&format!("Deleted: {}", w.config)), "{out:?}");
    assert!(store.images().unwrap().is_empty());
}

#[test]
fn load_rejects_garbage_and_corrupt_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let err = husk_image::load(&store, &b"not a tar"[..], None).unwrap_err();
    assert!(!err.to_string().is_empty());
    let empty = tar::Builder::new(Vec::new()).into_inner().unwrap();
    let err = husk_image::load(&store, &empty[..], None).unwrap_err();
    assert!(
        err.to_string()
            .contains("not a docker save tar or OCI archive"),
        "{err}"
    );

    // An OCI layout with a layer whose bytes do not match its name.
    let layout = tmp.path().join("layout");
    let w = oci_layout(
        &layout,
        "docker.io/library/bad:1",
        &ImageSpec::busybox("bad"),
    );
    let blob = layout.join("blobs/sha256").join(w.layers[0].hex());
    let mut data = std::fs::read(&blob).unwrap();
    let n = data.len() - 10;
    data[n] ^= 1;
    std::fs::write(&blob, data).unwrap();
    let err = husk_image::load_layout(&store, &layout, None).unwrap_err();
    assert!(err.to_string().contains("hashes to"), "{err}");
    assert!(store.images().unwrap().is_empty());
    assert!(!store.has_blob(&w.layers[0]));
}

#[test]
fn load_refuses_paths_leaving_the_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let manifest = br#"[{"Config":"../../../../etc/passwd","RepoTags":["evil:1"],"Layers":["../../x/layer.tar"]}]"#;
    let mut h = tar::Header::new_gnu();
    h.set_size(manifest.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "manifest.json", &manifest[..])
        .unwrap();
    let archive = b.into_inner().unwrap();
    let err = husk_image::load(&store, &archive[..], None).unwrap_err();
    assert!(format!("{err:?}").contains("Hostile"), "{err:?}");
    assert!(store.images().unwrap().is_empty());
}
