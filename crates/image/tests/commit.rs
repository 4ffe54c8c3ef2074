//! `commit` and `export` over upper/lower directories built by hand as an
//! overlayfs `userxattr` mount leaves them (whiteouts as 0:0 character
//! devices, made with mknod: these tests run as root).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use husk_image::{
    CommitChanges, CommitError, CommitOptions, ImportConfig, Store, UnpackLimits, commit, export,
    import_dir, layer_from_upper,
};

fn whiteout(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o000),
        0,
    )
    .expect("mknod a whiteout (run the tests as root)");
}

fn opaque(p: &Path) {
    rustix::fs::setxattr(
        p,
        "user.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("set user.overlay.opaque");
}

/// (path → (kind, data or link target, mode, uid)) of a tar.
fn entries(tar: &[u8]) -> BTreeMap<String, (char, Vec<u8>, u32, u64)> {
    let mut out = BTreeMap::new();
    for e in tar::Archive::new(tar).entries().unwrap() {
        let mut e = e.unwrap();
        let p = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let h = e.header().clone();
        let kind = match h.entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Regular => 'f',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            tar::EntryType::Char => 'c',
            _ => '?',
        };
        let data = match kind {
            'l' | 'h' => e.link_name_bytes().unwrap().into_owned(),
            _ => {
                let mut b = Vec::new();
                e.read_to_end(&mut b).unwrap();
                b
            }
        };
        out.insert(p, (kind, data, h.mode().unwrap(), h.uid().unwrap()));
    }
    out
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// A base image (imported) and a hand-made upper dir over its rootfs.
fn setup(tmp: &Path) -> (Store, husk_image::Image, std::path::PathBuf) {
    let base = tmp.join("base");
    std::fs::create_dir_all(base.join("etc")).unwrap();
    std::fs::create_dir_all(base.join("data/sub")).unwrap();
    std::fs::write(base.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    std::fs::write(base.join("etc/gone"), b"delete me").unwrap();
    std::fs::write(base.join("data/old"), b"hidden by opaque").unwrap();
    std::fs::write(base.join("data/sub/x"), b"also hidden").unwrap();
    let store = Store::open(tmp.join("store")).unwrap();
    import_dir(
        &store,
        &base,
        "base",
        &ImportConfig {
            cmd: vec!["/bin/sh".into()],
            env: vec![],
        },
    )
    .unwrap();
    let img = store.resolve("base").unwrap();

    let upper = tmp.join("upper");
    for d in ["etc", "data", "dev", "proc", "sys", "app"] {
        std::fs::create_dir_all(upper.join(d)).unwrap();
    }
    std::fs::write(upper.join("etc/hostname"), b"c0ffee\n").unwrap();
    std::fs::write(upper.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    whiteout(&upper.join("etc/gone"));
    opaque(&upper.join("data"));
    std::fs::write(upper.join("data/new"), b"fresh").unwrap();
    std::fs::write(upper.join("app/main"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::hard_link(upper.join("app/main"), upper.join("app/again")).unwrap();
    std::os::unix::fs::symlink("main", upper.join("app/link")).unwrap();
    std::os::unix::fs::chown(upper.join("app/main"), Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(
        upper.join("app/main"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    (store, img, upper)
}

#[test]
fn layer_from_upper_writes_oci_whiteouts_and_skips_agent_stubs() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, img, upper) = setup(tmp.path());
    let rootfs = store.rootfs(&img, UnpackLimits::default()).unwrap();
    let mut blob = Vec::new();
    let info = layer_from_upper(&upper, &rootfs.path, &mut blob).unwrap();
    assert_eq!(info.size, blob.len() as u64);
    assert_eq!(info.digest, husk_image::Digest::of(&blob));
    let tar = gunzip(&blob);
    assert_eq!(info.diff_id, husk_image::Digest::of(&tar));
    let e = entries(&tar);
    let names: Vec<&str> = e.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "app",
            "app/again",
            "app/link",
            "app/main",
            "data",
            "data/.wh..wh..opq",
            "data/new",
            "etc",
            "etc/.wh.gone",
        ],
        "the agent's dev, proc, sys, etc/hostname and etc/hosts are not in the image"
    );
    // Sorted: `again` comes first, so it carries the data and `main` links to it.
    assert_eq!(e["app/again"].0, 'f');
    assert_eq!(e["app/main"], ('h', b"app/again".to_vec(), 0o750, 1000));
    assert_eq!(e["app/link"].0, 'l');
    assert_eq!(e["app/link"].1, b"main");
    assert_eq!(e["app/again"].2, 0o750);
    assert_eq!(e["app/again"].3, 1000);
    assert_eq!(e["etc/.wh.gone"].0, 'f');
    assert_eq!(e["data/.wh..wh..opq"].0, 'f');
    // The same directory gives the same layer.
    let mut again = Vec::new();
    assert_eq!(
        layer_from_upper(&upper, &rootfs.path, &mut again).unwrap(),
        info
    );
    assert_eq!(blob, again);
}

#[test]
fn committed_image_unpacks_with_the_change_and_without_the_deleted_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, img, upper) = setup(tmp.path());
    let rootfs = store.rootfs(&img, UnpackLimits::default()).unwrap();
    let opts = CommitOptions {
        changes: CommitChanges::parse(&[
            "CMD [\"/app/main\"]",
            "ENV A=1 B=\"two words\"",
            "WORKDIR /app",
            "USER 1000",
            "EXPOSE 8080",
            "LABEL version=2",
        ])
        .unwrap(),
        author: Some("Jane <jane@example.com>".into()),
        message: Some("add the app".into()),
        created_by: Some("/bin/sh".into()),
        created: Some("2025-01-02T03:04:05Z".into()),
        tag: Some("app:v2".into()),
    };
    let new = commit(&store, &img, &upper, &rootfs.path, &opts).unwrap();
    assert_eq!(new.repo_tags, vec!["app:v2".to_string()]);
    assert_eq!(new.config.rootfs.diff_ids.len(), 2);
    assert_eq!(new.config.rootfs.diff_ids[0], img.config.rootfs.diff_ids[0]);
    let c = new.config.config.clone().unwrap();
    assert_eq!(c.cmd, Some(vec!["/app/main".to_string()]));
    assert_eq!(c.working_dir.as_deref(), Some("/app"));
    assert_eq!(c.user.as_deref(), Some("1000"));
    let env = c.env.unwrap();
    assert!(env.contains(&"A=1".to_string()) && env.contains(&"B=two words".to_string()));
    assert!(c.exposed_ports.unwrap().contains_key("8080/tcp"));
    assert_eq!(c.labels.unwrap()["version"], "2");
    let raw: serde_json::Value = serde_json::from_slice(&new.config_raw).unwrap();
    assert_eq!(raw["author"], "Jane <jane@example.com>");
    assert_eq!(raw["comment"], "add the app");
    let h = raw["history"].as_array().unwrap();
    assert_eq!(h.last().unwrap()["comment"], "add the app");
    assert_eq!(h.last().unwrap()["created_by"], "/bin/sh");

    // Same inputs, same image id.
    let again = commit(&store, &img, &upper, &rootfs.path, &opts).unwrap();
    assert_eq!(again.id, new.id);

    // Unpacked: the new file, not the deleted ones.
    let out = store.rootfs(&new, UnpackLimits::default()).unwrap();
    let r = &out.path;
    assert_eq!(
        std::fs::read(r.join("app/main")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        std::fs::metadata(r.join("app/main")).unwrap().ino(),
        std::fs::metadata(r.join("app/again")).unwrap().ino()
    );
    assert_eq!(std::fs::read(r.join("data/new")).unwrap(), b"fresh");
    assert!(r.join("etc/passwd").is_file());
    assert!(!r.join("etc/gone").exists());
    assert!(
        !r.join("data/old").exists(),
        "opaque dir hides the lower files"
    );
    assert!(!r.join("data/sub").exists());
    assert!(!r.join("etc/hostname").exists());
    assert!(!r.join("dev").exists());

    // History shows the commit on top.
    let rows = husk_image::history(&store, &new).unwrap();
    assert_eq!(rows[0].entry.comment.as_deref(), Some("add the app"));
    assert_eq!(rows[0].size, 5 + 18);

    // And a save/load round trip keeps it.
    let mut archive = Vec::new();
    husk_image::save(&store, &["app:v2"], &mut archive).unwrap();
    let fresh = Store::open(tmp.path().join("fresh")).unwrap();
    let loaded = husk_image::load(&fresh, &archive[..], None).unwrap();
    assert_eq!(loaded[0].id, new.id);
}

#[test]
fn commit_refuses_bad_changes_and_names() {
    for bad in ["FROM x", "CMD", "ENV", "ENV =x", "CMD [not json", "RUN ls"] {
        assert!(
            matches!(CommitChanges::parse(&[bad]), Err(CommitError::BadChange(_))),
            "{bad}"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let (store, img, upper) = setup(tmp.path());
    let opts = CommitOptions {
        tag: Some("Bad Name!".into()),
        ..Default::default()
    };
    assert!(matches!(
        commit(&store, &img, &upper, &tmp.path().join("none"), &opts),
        Err(CommitError::BadName(_))
    ));
    // Untagged: a dangling image.
    let rootfs = store.rootfs(&img, UnpackLimits::default()).unwrap();
    let new = commit(
        &store,
        &img,
        &upper,
        &rootfs.path,
        &CommitOptions::default(),
    )
    .unwrap();
    assert!(new.repo_tags.is_empty());
}

#[test]
fn export_writes_the_merged_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, img, upper) = setup(tmp.path());
    let rootfs = store.rootfs(&img, UnpackLimits::default()).unwrap();
    let mut out = Vec::new();
    export(&rootfs.path, &upper, &mut out).unwrap();
    let e = entries(&out);
    for present in [
        "app/main",
        "app/link",
        "data/new",
        "etc/passwd",
        "etc/hostname",
        "dev",
    ] {
        assert!(e.contains_key(present), "{present} missing: {:?}", e.keys());
    }
    for absent in [
        "etc/gone",
        "data/old",
        "data/sub",
        "data/sub/x",
        "etc/.wh.gone",
    ] {
        assert!(!e.contains_key(absent), "{absent} present");
    }
    assert_eq!(e["etc/passwd"].1, b"root:x:0:0::/root:/bin/sh\n");
    // A symlink in the upper dir pointing out is archived, not followed.
    std::os::unix::fs::symlink("/etc", upper.join("escape")).unwrap();
    let mut out = Vec::new();
    export(&rootfs.path, &upper, &mut out).unwrap();
    let e = entries(&out);
    assert_eq!(e["escape"], ('l', b"/etc".to_vec(), 0o777, 0));
    assert!(!e.keys().any(|k| k.starts_with("escape/")));
}
