//! Pulls from a real registry (Debian's docker-registry) on loopback, with images pushed
//! by Debian's skopeo from OCI layouts built here.

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use husk_image::progress::{LayerStatus, ProgressEvent};
use husk_image::{NoProgress, Progress, PullError, Reference, Store, UnpackLimits, pull};

/// Records events (and optionally runs a hook on each).
#[derive(Default)]
struct Recorder {
    lines: Mutex<Vec<String>>,
}

impl Progress for Recorder {
    fn event(&self, e: ProgressEvent<'_>) {
        let line = match e {
            ProgressEvent::Line(l) => l.to_string(),
            ProgressEvent::Layer { id, status, .. } => format!("{id}: {}", status.as_str()),
        };
        self.lines.lock().unwrap().push(line);
    }
}

fn setup() -> (tempfile::TempDir, Store) {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    (tmp, store)
}

#[test]
fn pull_by_tag_then_by_digest_and_run_spec() {
    let (tmp, store) = setup();
    let reg = Registry::start(&tmp.path().join("reg"), None);
    let layout = tmp.path().join("layout");
    let mut spec = ImageSpec::busybox("tagged");
    spec.layers.push(layer(&[
        E::Dir("app", 0o755),
        E::File("app/hello.txt", b"hi\n", 0o644),
    ]));
    spec.workdir = Some("/app".into());
    spec.entrypoint = Some(vec!["/bin/sh".into(), "-c".into()]);
    spec.cmd = vec!["cat hello.txt".into()];
    let w = oci_layout(&layout, "v1", &spec);
    push(
        &layout,
        "v1",
        &format!("{}/test/busybox:v1", reg.host()),
        None,
        false,
    );

    let r = Reference::parse(&format!("{}/test/busybox:v1", reg.host())).unwrap();
    let rec = Recorder::default();
    let out = pull(&store, &r, &opts(&reg.host(), None), &rec).unwrap();
    let lines = rec.lines.lock().unwrap().clone();
    assert_eq!(lines[0], "v1: Pulling from test/busybox");
    for l in &w.layers {
        assert!(
            lines.contains(&format!("{}: Pulling fs layer", l.short())),
            "{lines:?}"
        );
        assert!(
            lines.contains(&format!("{}: Download complete", l.short())),
            "{lines:?}"
        );
        assert!(
            lines.contains(&format!("{}: Pull complete", l.short())),
            "{lines:?}"
        );
    }
    assert_eq!(lines[lines.len() - 2], format!("Digest: {}", w.manifest));
    assert_eq!(
        lines[lines.len() - 1],
        format!(
            "Status: Downloaded newer image for {}/test/busybox:v1",
            reg.host()
        )
    );
    assert_eq!(out.image.id, w.config);
    assert!(!out.up_to_date);
    for l in &w.layers {
        assert!(store.has_blob(l));
    }

    // Listed, with the repo digest.
    let rows = store.images().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].repository, format!("{}/test/busybox", reg.host()));
    assert_eq!(rows[0].tag, "v1");
    assert_eq!(rows[0].digest.as_ref(), Some(&w.manifest));

    // Pull again: up to date, nothing downloaded.
    let rec = Recorder::default();
    let again = pull(&store, &r, &opts(&reg.host(), None), &rec).unwrap();
    assert!(again.up_to_date);
    let lines = rec.lines.lock().unwrap().clone();
    assert!(lines.contains(&format!("{}: Already exists", w.layers[0].short())));
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("Status: Image is up to date for")
    );

    // By digest, into a fresh store.
    let store2 = Store::open(tmp.path().join("store2")).unwrap();
    let rd = Reference::parse(&format!("{}/test/busybox@{}", reg.host(), w.manifest)).unwrap();
    let out = pull(&store2, &rd, &opts(&reg.host(), None), &NoProgress).unwrap();
    assert_eq!(out.image.id, w.config);
    let rows = store2.images().unwrap();
    assert_eq!(rows[0].tag, "<none>");
    assert_eq!(store2.resolve(&rd.to_string()).unwrap().id, w.config);

    // `husk run`'s lookup: found locally by name or short id, pulled when missing.
    assert_eq!(
        husk_image::resolve_or_pull(
            &store,
            &w.config.hex()[..12],
            &opts(&reg.host(), None),
            &NoProgress
        )
        .unwrap()
        .id,
        w.config
    );
    let store3 = Store::open(tmp.path().join("store3")).unwrap();
    let rec = Recorder::default();
    let img = husk_image::resolve_or_pull(&store3, &r.to_string(), &opts(&reg.host(), None), &rec)
        .unwrap();
    assert_eq!(img.id, w.config);
    assert_eq!(
        rec.lines.lock().unwrap()[0],
        format!(
            "Unable to find image '{}/test/busybox:v1' locally",
            reg.host()
        )
    );

    // Unpack and resolve the process.
    let img = store.resolve(&r.to_string()).unwrap();
    let rootfs = store.rootfs(&img, UnpackLimits::default()).unwrap();
    assert_eq!(
        std::fs::read(rootfs.path.join("app/hello.txt")).unwrap(),
        b"hi\n"
    );
    assert_eq!(
        std::fs::read(rootfs.path.join("bin/busybox")).unwrap(),
        busybox()
    );
    let spec = husk_image::resolve_process(
        &img.config,
        Some(&rootfs.path),
        &husk_image::RunOverrides {
            user: Some("app".into()),
            ..Default::default()
        },
        &|_| None,
    )
    .unwrap();
    assert_eq!(spec.args, ["/bin/sh", "-c", "cat hello.txt"]);
    assert_eq!(spec.cwd, "/app");
    assert_eq!(spec.user.uid, 1000);
    assert_eq!(spec.user.gid, 1000);
    assert_eq!(spec.user.additional_gids, vec![10]);
    assert!(spec.env.contains(&"HOME=/home/app".to_string()));
}

#[test]
fn pull_multi_arch_index_picks_amd64() {
    let (tmp, store) = setup();
    let reg = Registry::start(&tmp.path().join("reg"), None);
    let layout = tmp.path().join("layout");
    let mut arm = ImageSpec::busybox("arm64-image");
    arm.arch = "arm64";
    arm.layers = vec![layer(&[E::File("which", b"arm64\n", 0o644)])];
    let mut amd = ImageSpec::busybox("amd64-image");
    amd.layers
        .push(layer(&[E::File("which", b"amd64\n", 0o644)]));
    amd.comp = Comp::Zstd;
    let (index_digest, written) = oci_layout_multi(&layout, "multi", &[arm, amd]);
    push(
        &layout,
        "multi",
        &format!("{}/multi/img:latest", reg.host()),
        None,
        true,
    );

    let r = Reference::parse(&format!("{}/multi/img", reg.host())).unwrap();
    let rec = Recorder::default();
    let out = pull(&store, &r, &opts(&reg.host(), None), &rec).unwrap();
    assert_eq!(out.digest, index_digest, "Digest: shows the index digest");
    assert_eq!(
        out.image.id, written[1].config,
        "the amd64 image was chosen"
    );
    assert_eq!(out.image.manifest_digest, written[1].manifest);
    assert!(
        !store.has_blob(&written[0].layers[0]),
        "arm64 layer not fetched"
    );
    // zstd layers unpack.
    let rootfs = store.rootfs(&out.image, UnpackLimits::default()).unwrap();
    assert_eq!(
        std::fs::read(rootfs.path.join("which")).unwrap(),
        b"amd64\n"
    );
    let lines = rec.lines.lock().unwrap().clone();
    assert!(lines.contains(&format!("Digest: {index_digest}")));

    // An index without amd64 is refused clearly.
    let layout2 = tmp.path().join("layout2");
    let mut arm = ImageSpec::busybox("arm-only");
    arm.arch = "arm64";
    oci_layout_multi(&layout2, "arm", &[arm]);
    push(
        &layout2,
        "arm",
        &format!("{}/multi/armonly:latest", reg.host()),
        None,
        true,
    );
    let r = Reference::parse(&format!("{}/multi/armonly", reg.host())).unwrap();
    let err = pull(&store, &r, &opts(&reg.host(), None), &NoProgress).unwrap_err();
    assert!(matches!(err, PullError::NoPlatform { .. }), "{err}");
    assert!(err.to_string().contains("linux/arm64"), "{err}");
}

#[test]
fn pull_with_htpasswd_auth_and_login() {
    let (tmp, store) = setup();
    let reg = Registry::start(&tmp.path().join("reg"), Some(("alice", "s3cret")));
    let layout = tmp.path().join("layout");
    let w = oci_layout(&layout, "v1", &ImageSpec::busybox("auth"));
    push(
        &layout,
        "v1",
        &format!("{}/private/img:v1", reg.host()),
        Some("alice:s3cret"),
        false,
    );
    let r = Reference::parse(&format!("{}/private/img:v1", reg.host())).unwrap();
    let auth = store.auth_path();

    // Anonymous: refused with a hint to log in.
    let err = pull(
        &store,
        &r,
        &opts(&reg.host(), Some(auth.clone())),
        &NoProgress,
    )
    .unwrap_err();
    assert!(err.to_string().contains("husk login"), "{err}");
    assert!(store.images().unwrap().is_empty());

    // Wrong password: login fails and stores nothing.
    let o = opts(&reg.host(), Some(auth.clone()));
    let err = husk_image::login(&reg.host(), "alice", "wrong", &o).unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(!auth.exists());

    husk_image::login(&reg.host(), "alice", "s3cret", &o).unwrap();
    let text = std::fs::read_to_string(&auth).unwrap();
    assert!(text.contains(&reg.host()));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&auth).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    let out = pull(&store, &r, &o, &NoProgress).unwrap();
    assert_eq!(out.image.id, w.config);
    assert!(husk_image::logout(&reg.host(), &o).unwrap());
}

#[test]
fn corrupted_blob_is_refused_and_nothing_stored() {
    let (tmp, store) = setup();
    let reg = Registry::start(&tmp.path().join("reg"), None);
    let layout = tmp.path().join("layout");
    let mut spec = ImageSpec::busybox("corrupt");
    spec.layers
        .push(layer(&[E::File("data.bin", &vec![7u8; 200_000], 0o644)]));
    let w = oci_layout(&layout, "v1", &spec);
    push(
        &layout,
        "v1",
        &format!("{}/bad/img:v1", reg.host()),
        None,
        false,
    );
    // Flip bytes in the stored layer, keeping its size.
    let f = reg.blob_file(&w.layers[1]);
    let mut data = std::fs::read(&f).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    data[mid + 1] ^= 0xff;
    std::fs::write(&f, data).unwrap();

    let r = Reference::parse(&format!("{}/bad/img:v1", reg.host())).unwrap();
    let err = pull(&store, &r, &opts(&reg.host(), None), &NoProgress).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PullError::DigestMismatch { .. }), "{msg}");
    assert!(
        msg.contains("digest mismatch") && msg.contains(&w.layers[1].to_string()),
        "{msg}"
    );
    assert!(
        !store.has_blob(&w.layers[1]),
        "corrupt blob must not be stored"
    );
    assert!(store.images().unwrap().is_empty(), "no image recorded");
    assert!(store.resolve(&r.to_string()).is_err());
    // No partial download of the corrupt layer is kept for resuming. (A cancelled
    // download of the other, valid layer may be, and later pulls resume it.)
    let partial = store
        .root()
        .join("tmp")
        .join(format!("{}.partial", w.layers[1].hex()));
    assert!(!partial.exists(), "corrupt partial download removed");
}

/// Kills the registry once `after` bytes of a layer have arrived.
struct KillAt<'a> {
    after: u64,
    seen: AtomicU64,
    resumed_from: AtomicU64,
    fired: AtomicBool,
    reg: &'a Mutex<Registry>,
    big: String,
}

impl Progress for KillAt<'_> {
    fn event(&self, e: ProgressEvent<'_>) {
        if let ProgressEvent::Layer {
            id,
            status: LayerStatus::Downloading,
            current,
            ..
        } = e
            && id == self.big
        {
            if self.seen.load(Ordering::SeqCst) == 0 && current > 0 {
                self.resumed_from.store(current, Ordering::SeqCst);
            }
            self.seen.fetch_max(current.max(1), Ordering::SeqCst);
            if current >= self.after && !self.fired.swap(true, Ordering::SeqCst) {
                self.reg.lock().unwrap().kill();
            }
        }
    }
}

#[test]
fn registry_dying_mid_pull_fails_cleanly_and_retry_resumes() {
    let (tmp, store) = setup();
    let reg = Registry::start(&tmp.path().join("reg"), None);
    let layout = tmp.path().join("layout");
    // An incompressible 24 MiB layer, so the download takes many reads.
    let mut noise = vec![0u8; 24 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in noise.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let mut spec = ImageSpec::busybox("big");
    spec.layers
        .push(layer(&[E::File("noise.bin", &noise, 0o644)]));
    let w = oci_layout(&layout, "v1", &spec);
    push(
        &layout,
        "v1",
        &format!("{}/big/img:v1", reg.host()),
        None,
        false,
    );
    let host = reg.host();
    let reg = Mutex::new(reg);
    let r = Reference::parse(&format!("{host}/big/img:v1")).unwrap();
    let mut o = opts(&host, None);
    o.attempts = 2;

    let killer = KillAt {
        after: 2 << 20,
        seen: AtomicU64::new(0),
        resumed_from: AtomicU64::new(0),
        fired: AtomicBool::new(false),
        reg: &reg,
        big: w.layers[1].short().to_string(),
    };
    let err = pull(&store, &r, &o, &killer).unwrap_err();
    assert!(killer.fired.load(Ordering::SeqCst));
    let msg = err.to_string();
    eprintln!("error after the registry died: {msg}");
    assert!(
        msg.contains("pull again to resume") || msg.contains("cannot reach registry"),
        "{msg}"
    );
    assert!(
        store.images().unwrap().is_empty(),
        "nothing recorded after a failed pull"
    );
    assert!(!store.has_blob(&w.layers[1]));
    let partial = store
        .root()
        .join("tmp")
        .join(format!("{}.partial", w.layers[1].hex()));
    let kept = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);

    // The registry comes back; the same pull completes, resuming the partial layer.
    reg.lock().unwrap().restart();
    let watcher = KillAt {
        after: u64::MAX,
        seen: AtomicU64::new(0),
        resumed_from: AtomicU64::new(0),
        fired: AtomicBool::new(false),
        reg: &reg,
        big: w.layers[1].short().to_string(),
    };
    let out = pull(&store, &r, &o, &watcher).unwrap();
    assert_eq!(out.image.id, w.config);
    assert!(store.has_blob(&w.layers[1]));
    assert!(
        kept >= 2 << 20,
        "the partial download was kept ({kept} bytes)"
    );
    assert_eq!(
        watcher.resumed_from.load(Ordering::SeqCst),
        kept,
        "download resumed from the partial file"
    );
    assert!(!partial.exists());
    let rootfs = store.rootfs(&out.image, UnpackLimits::default()).unwrap();
    assert_eq!(std::fs::read(rootfs.path.join("noise.bin")).unwrap(), noise);
}

#[test]
fn missing_tag_fails_and_loopback_speaks_plain_http() {
    let (tmp, store) = setup();
    let reg = Registry::start(&tmp.path().join("reg"), None);
    let layout = tmp.path().join("layout");
    oci_layout(&layout, "v1", &ImageSpec::busybox("x"));
    push(
        &layout,
        "v1",
        &format!("{}/a/b:v1", reg.host()),
        None,
        false,
    );
    let r = Reference::parse(&format!("{}/a/b:nope", reg.host())).unwrap();
    let err = pull(&store, &r, &opts(&reg.host(), None), &NoProgress).unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    assert!(store.images().unwrap().is_empty());
    // Not marked insecure, but on loopback: HTTPS fails, plain HTTP is used (as
    // Docker does), with no $HUSK_INSECURE_REGISTRIES.
    let r = Reference::parse(&format!("{}/a/b:v1", reg.host())).unwrap();
    let o = husk_image::RegistryOptions::default();
    assert!(o.insecure_registries.is_empty() && o.tls_verify);
    pull(&store, &r, &o, &NoProgress).unwrap();
    assert_eq!(store.images().unwrap().len(), 1);
    // localhost is loopback too.
    let r = Reference::parse(&format!("localhost:{}/a/b:v1", reg.port)).unwrap();
    let store2 = Store::open(tmp.path().join("store2")).unwrap();
    pull(&store2, &r, &o, &NoProgress).unwrap();
}

#[test]
fn plain_http_elsewhere_needs_tls_verify_false_and_the_error_says_so() {
    let Some(ip) =
        non_loopback_ipv4("plain_http_elsewhere_needs_tls_verify_false_and_the_error_says_so")
    else {
        return;
    };
    let (tmp, store) = setup();
    let reg = Registry::start(&tmp.path().join("reg"), None);
    let layout = tmp.path().join("layout");
    let w = oci_layout(&layout, "v1", &ImageSpec::busybox("remote"));
    push(
        &layout,
        "v1",
        &format!("{}/r/img:v1", reg.host()),
        None,
        false,
    );
    // The registry as a remote host would be: a non-loopback address.
    let fwd = Forward::start(ip, reg.port);
    let host = format!("{ip}:{}", fwd.port);
    let r = Reference::parse(&format!("{host}/r/img:v1")).unwrap();
    let o = husk_image::RegistryOptions::default();
    let err = pull(&store, &r, &o, &NoProgress).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            PullError::Registry(husk_image::RegistryError::Tls { .. })
        ),
        "{msg}"
    );
    assert!(
        msg.contains("$HUSK_INSECURE_REGISTRIES") && msg.contains("--tls-verify=false"),
        "{msg}"
    );
    // --tls-verify=false: HTTPS without verification fails, plain HTTP works.
    let o = husk_image::RegistryOptions {
        tls_verify: false,
        ..Default::default()
    };
    let out = pull(&store, &r, &o, &NoProgress).unwrap();
    assert_eq!(out.image.id, w.config);
    // $HUSK_INSECURE_REGISTRIES's list still works.
    let store2 = Store::open(tmp.path().join("store2")).unwrap();
    let out = pull(&store2, &r, &opts(&host, None), &NoProgress).unwrap();
    assert_eq!(out.image.id, w.config);
}

/// An image in a store, loaded from an OCI layout and named `name`.
fn loaded_image(tmp: &std::path::Path, store: &Store, spec: &ImageSpec, name: &str) -> Written {
    let layout = tmp.join(format!("layout-{}", name.replace(['/', ':'], "_")));
    let w = oci_layout(&layout, "v1", spec);
    husk_image::load_layout(store, &layout, None).unwrap();
    store.tag(&w.config.to_string(), name).unwrap();
    w
}

fn push_lines(
    store: &Store,
    name: &str,
    o: &husk_image::RegistryOptions,
) -> (husk_image::PushOutcome, Vec<String>) {
    let rec = Recorder::default();
    let out = husk_image::push(store, &Reference::parse(name).unwrap(), o, &rec).unwrap();
    let lines = rec.lines.lock().unwrap().clone();
    (out, lines)
}

#[test]
fn push_then_inspect_with_skopeo_and_pull_back() {
    let (tmp, store) = setup();
    let reg = Registry::start(&tmp.path().join("reg"), None);
    let mut spec = ImageSpec::busybox("pushed");
    // Big enough to go up in several chunks with the chunk size below.
    spec.layers
        .push(layer(&[E::File("data.bin", &vec![3u8; 300_000], 0o644)]));
    let name = format!("{}/push/img:v1", reg.host());
    let w = loaded_image(tmp.path(), &store, &spec, &name);
    let o = husk_image::RegistryOptions {
        upload_chunk_size: 64 << 10,
        ..Default::default()
    };
    // The busybox layer goes up in chunks (PATCH), the rest in one PUT each.
    let big = std::fs::metadata(store.blob_path(&w.layers[0]))
        .unwrap()
        .len();
    assert!(big > 3 * o.upload_chunk_size, "{big}");
    assert!(
        std::fs::metadata(store.blob_path(&w.layers[1]))
            .unwrap()
            .len()
            < o.upload_chunk_size
    );

    let (out, lines) = push_lines(&store, &name, &o);
    assert_eq!(
        lines[0],
        format!("The push refers to repository [{}/push/img]", reg.host())
    );
    for l in &w.layers {
        assert!(
            lines.contains(&format!("{}: Preparing", l.short())),
            "{lines:?}"
        );
        assert!(
            lines.contains(&format!("{}: Pushed", l.short())),
            "{lines:?}"
        );
    }
    assert_eq!(out.digest, w.manifest);
    assert_eq!(out.size, w.manifest_len);
    assert_eq!(
        (out.pushed, out.existed, out.mounted),
        (3, 0, 0),
        "2 layers and the config"
    );
    assert_eq!(
        lines.last().unwrap(),
        &format!("v1: digest: {} size: {}", w.manifest, w.manifest_len)
    );

    // skopeo sees the same manifest digest.
    let json = skopeo_output(&["inspect", "--tls-verify=false", &format!("docker://{name}")]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["Digest"], w.manifest.to_string(), "{json}");
    // The push is recorded as the image's repo digest.
    let img = store.resolve(&name).unwrap();
    assert_eq!(
        img.repo_digests,
        [format!("{}/push/img@{}", reg.host(), w.manifest)]
    );

    // Deleted locally, pulled back over plain HTTP (loopback, no options): the same image.
    store.remove(&name, true).unwrap();
    assert!(store.images().unwrap().is_empty());
    assert!(store.gc().unwrap());
    assert!(!store.has_blob(&w.layers[1]));
    let back = pull(
        &store,
        &Reference::parse(&name).unwrap(),
        &husk_image::RegistryOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(back.image.id, w.config);
    assert_eq!(back.image.manifest_digest, w.manifest);
    assert_eq!(back.digest, w.manifest);
    let rootfs = store.rootfs(&back.image, UnpackLimits::default()).unwrap();
    assert_eq!(
        std::fs::read(rootfs.path.join("data.bin")).unwrap(),
        vec![3u8; 300_000]
    );
}

#[test]
fn push_skips_blobs_the_registry_has_and_mounts_from_other_repositories() {
    let (tmp, store) = setup();
    let reg = Registry::start(&tmp.path().join("reg"), None);
    let spec = ImageSpec::busybox("again");
    let name = format!("{}/first/img:v1", reg.host());
    let w = loaded_image(tmp.path(), &store, &spec, &name);
    let o = husk_image::RegistryOptions::default();
    let (first, _) = push_lines(&store, &name, &o);
    assert_eq!(first.pushed, 2);

    // Pushed again: every blob is already there.
    let (again, lines) = push_lines(&store, &name, &o);
    assert_eq!((again.pushed, again.existed, again.mounted), (0, 2, 0));
    assert!(
        lines.contains(&format!("{}: Layer already exists", w.layers[0].short())),
        "{lines:?}"
    );
    assert_eq!(again.digest, first.digest);

    // Another repository of the same registry: mounted from the first.
    let other = format!("{}/second/img:v2", reg.host());
    store.tag(&name, &other).unwrap();
    let (mounted, lines) = push_lines(&store, &other, &o);
    assert_eq!(
        (mounted.pushed, mounted.existed, mounted.mounted),
        (0, 0, 2),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!("{}: Mounted from first/img", w.layers[0].short())),
        "{lines:?}"
    );
    assert_eq!(
        lines.last().unwrap(),
        &format!("v2: digest: {} size: {}", w.manifest, w.manifest_len)
    );
    let json = skopeo_output(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{other}"),
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["Digest"], w.manifest.to_string());

    // An image that is not in the store.
    let err = husk_image::push(
        &store,
        &Reference::parse(&format!("{}/nope/img:v1", reg.host())).unwrap(),
        &o,
        &NoProgress,
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not exist locally"), "{err}");
}

#[test]
fn push_with_htpasswd_login() {
    let (tmp, store) = setup();
    let reg = Registry::start(&tmp.path().join("reg"), Some(("alice", "s3cret")));
    let name = format!("{}/private/pushed:v1", reg.host());
    let w = loaded_image(tmp.path(), &store, &ImageSpec::busybox("auth-push"), &name);
    let o = opts(&reg.host(), Some(store.auth_path()));
    let err =
        husk_image::push(&store, &Reference::parse(&name).unwrap(), &o, &NoProgress).unwrap_err();
    assert!(err.to_string().contains("husk login"), "{err}");
    husk_image::login(&reg.host(), "alice", "s3cret", &o).unwrap();
    let out = husk_image::push(&store, &Reference::parse(&name).unwrap(), &o, &NoProgress).unwrap();
    assert_eq!(out.digest, w.manifest);
    let json = skopeo_output(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "alice:s3cret",
        &format!("docker://{name}"),
    ]);
    assert!(json.contains(&w.manifest.to_string()), "{json}");
}

#[test]
fn concurrent_pulls_and_unpacks_share_one_store() {
    let (tmp, _store) = setup();
    let reg = Registry::start(&tmp.path().join("reg"), None);
    let layout = tmp.path().join("layout");
    let mut spec = ImageSpec::busybox("concurrent");
    spec.layers
        .push(layer(&[E::File("big.bin", &vec![42u8; 3 << 20], 0o644)]));
    let w = oci_layout(&layout, "v1", &spec);
    push(
        &layout,
        "v1",
        &format!("{}/c/img:v1", reg.host()),
        None,
        false,
    );
    let root = tmp.path().join("shared-store");
    let r = Reference::parse(&format!("{}/c/img:v1", reg.host())).unwrap();
    let o = opts(&reg.host(), None);
    // Separate Store values (separate lock fds), as two husk processes would have.
    let paths: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let store = Store::open(&root).unwrap();
                    let out = pull(&store, &r, &o, &NoProgress).unwrap();
                    let rootfs = store.rootfs(&out.image, UnpackLimits::default()).unwrap();
                    assert_eq!(
                        std::fs::read(rootfs.path.join("big.bin")).unwrap().len(),
                        3 << 20
                    );
                    rootfs.path.clone()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        paths.windows(2).all(|p| p[0] == p[1]),
        "one shared rootfs: {paths:?}"
    );
    let store = Store::open(&root).unwrap();
    assert_eq!(store.images().unwrap().len(), 1);
    assert_eq!(store.resolve(&r.to_string()).unwrap().id, w.config);
    let rootfs_dirs: Vec<_> = std::fs::read_dir(root.join("rootfs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(rootfs_dirs.len(), 1, "{rootfs_dirs:?}");
}

#[test]
fn leftovers_of_a_crash_are_harmless() {
    let (tmp, store) = setup();
    let reg = Registry::start(&tmp.path().join("reg"), None);
    let layout = tmp.path().join("layout");
    let mut spec = ImageSpec::busybox("crash");
    spec.layers
        .push(layer(&[E::File("data", &vec![1u8; 100_000], 0o644)]));
    let w = oci_layout(&layout, "v1", &spec);
    push(
        &layout,
        "v1",
        &format!("{}/crash/img:v1", reg.host()),
        None,
        false,
    );
    // What a crash mid-pull and mid-unpack could leave behind: a partial download whose
    // tail is garbage, a blob temp file, a half-written index temp file, a half-unpacked
    // rootfs temp dir.
    let partial = store
        .root()
        .join("tmp")
        .join(format!("{}.partial", w.layers[1].hex()));
    std::fs::write(&partial, vec![0xAAu8; 500]).unwrap();
    std::fs::write(store.root().join("tmp/blob-1-2-3"), b"junk").unwrap();
    std::fs::write(store.root().join(".index.json.tmp-1-2-3"), b"{\"schemaVers").unwrap();
    let r = Reference::parse(&format!("{}/crash/img:v1", reg.host())).unwrap();
    let chain = husk_image::spec::chain_id(&[sha(&spec.layers[0]), sha(&spec.layers[1])]).unwrap();
    let stale = store
        .root()
        .join("rootfs")
        .join(format!(".tmp-{}-1-2-3", chain.hex()));
    std::fs::create_dir_all(stale.join("half")).unwrap();

    let out = pull(&store, &r, &opts(&reg.host(), None), &NoProgress).unwrap();
    assert_eq!(out.image.id, w.config);
    assert!(
        store.has_blob(&w.layers[1]),
        "garbage partial was restarted, not trusted"
    );
    assert!(!partial.exists());
    let rootfs = store.rootfs(&out.image, UnpackLimits::default()).unwrap();
    assert!(!stale.exists(), "stale unpack dir removed");
    assert_eq!(
        std::fs::read(rootfs.path.join("data")).unwrap(),
        vec![1u8; 100_000]
    );
    drop(rootfs);
    assert!(store.gc().unwrap());
    assert!(!store.root().join("tmp/blob-1-2-3").exists());
    assert!(!store.root().join(".index.json.tmp-1-2-3").exists());
    assert_eq!(store.images().unwrap().len(), 1);
}

#[test]
fn pull_with_anonymous_bearer_token_and_token_login() {
    let (tmp, store) = setup();
    let reg = Registry::start(&tmp.path().join("reg"), None);
    let layout = tmp.path().join("layout");
    let w = oci_layout(&layout, "v1", &ImageSpec::busybox("token"));
    push(
        &layout,
        "v1",
        &format!("{}/tok/img:v1", reg.host()),
        None,
        false,
    );

    // Anonymous token flow (Docker Hub's): 401 challenge → GET realm?service&scope → token.
    let front = TokenFront::start(reg.port, None);
    let r = Reference::parse(&format!("{}/tok/img:v1", front.host())).unwrap();
    let out = pull(&store, &r, &opts(&front.host(), None), &NoProgress).unwrap();
    assert_eq!(out.image.id, w.config);
    let reqs = front.token_requests.lock().unwrap().clone();
    assert!(!reqs.is_empty());
    assert!(
        reqs[0].starts_with("/token?service=husk-test&scope=repository%3Atok%2Fimg%3Apull"),
        "{reqs:?}"
    );
    assert!(reqs[0].ends_with("auth="), "anonymous: {reqs:?}");

    // A token service that wants credentials: anonymous fails, `login` then works.
    let front = TokenFront::start(reg.port, Some("Ym9iOmh1bnRlcjI=")); // bob:hunter2
    let store2 = Store::open(tmp.path().join("store2")).unwrap();
    let o = opts(&front.host(), Some(store2.auth_path()));
    let r = Reference::parse(&format!("{}/tok/img:v1", front.host())).unwrap();
    let err = pull(&store2, &r, &o, &NoProgress).unwrap_err();
    assert!(err.to_string().contains("token server refused"), "{err}");
    assert!(husk_image::login(&front.host(), "bob", "wrong", &o).is_err());
    husk_image::login(&front.host(), "bob", "hunter2", &o).unwrap();
    let out = pull(&store2, &r, &o, &NoProgress).unwrap();
    assert_eq!(out.image.id, w.config);
    let reqs = front.token_requests.lock().unwrap().clone();
    assert!(
        reqs.last()
            .unwrap()
            .ends_with("auth=Basic Ym9iOmh1bnRlcjI="),
        "{reqs:?}"
    );
}
