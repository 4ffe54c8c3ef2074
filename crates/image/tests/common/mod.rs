//! Test helpers: building OCI layouts from Debian's busybox-static, and running Debian's
//! docker-registry and skopeo on loopback.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use husk_image::Digest;

/// Finds a tool or fails with the apt package to install (CI installs them).
pub fn require(bin: &str, apt_package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(bin);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{bin}` is missing: install Debian's `{apt_package}` package (apt-get install {apt_package})"
    );
}

pub fn busybox() -> Vec<u8> {
    let p = require("busybox", "busybox-static");
    std::fs::read(p).expect("read busybox")
}

/// One tar entry for building layers.
pub enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

pub fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Hardlink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// The busybox base layer: /bin/busybox plus applet symlinks and /etc files.
pub fn busybox_layer() -> Vec<u8> {
    let bb = busybox();
    layer(&[
        E::Dir("bin", 0o755),
        E::File("bin/busybox", &bb, 0o755),
        E::Symlink("bin/sh", "busybox"),
        E::Symlink("bin/ls", "busybox"),
        E::Dir("etc", 0o755),
        E::File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000:app:/home/app:/bin/sh\n", 0o644),
        E::File("etc/group", b"root:x:0:\nwheel:x:10:app\napp:x:1000:\nnogroup:x:65534:\n", 0o644),
        E::Dir("tmp", 0o1777),
        E::Dir("root", 0o700),
    ])
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    let bin = require("zstd", "zstd");
    let mut child = Command::new(bin)
        .args(["-q", "-c", "-3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    writer.join().unwrap().unwrap();
    assert!(child.wait().unwrap().success());
    out
}

pub fn sha(data: &[u8]) -> Digest {
    Digest::of(data)
}

#[derive(Clone, Copy, PartialEq)]
pub enum Comp {
    Gzip,
    Zstd,
    None,
}

/// An image to write into an OCI layout.
pub struct ImageSpec {
    pub layers: Vec<Vec<u8>>,
    pub comp: Comp,
    pub arch: &'static str,
    pub cmd: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub label: String,
}

impl ImageSpec {
    pub fn busybox(label: &str) -> ImageSpec {
        ImageSpec {
            layers: vec![busybox_layer()],
            comp: Comp::Gzip,
            arch: "amd64",
            cmd: vec!["/bin/sh".into()],
            entrypoint: None,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            user: None,
            workdir: None,
            label: label.into(),
        }
    }
}

pub struct Written {
    pub manifest: Digest,
    pub manifest_len: u64,
    pub config: Digest,
    pub layers: Vec<Digest>,
}

fn put_blob(dir: &Path, data: &[u8]) -> (Digest, u64) {
    let d = sha(data);
    let p = dir.join("blobs/sha256").join(d.hex());
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, data).unwrap();
    (d, data.len() as u64)
}

/// Writes one image's blobs into an OCI layout dir (without touching index.json).
pub fn write_image(dir: &Path, img: &ImageSpec) -> Written {
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut layer_digests = Vec::new();
    for l in &img.layers {
        diff_ids.push(sha(l).to_string());
        let (data, mt) = match img.comp {
            Comp::Gzip => (gzip(l), "application/vnd.oci.image.layer.v1.tar+gzip"),
            Comp::Zstd => (zstd(l), "application/vnd.oci.image.layer.v1.tar+zstd"),
            Comp::None => (l.clone(), "application/vnd.oci.image.layer.v1.tar"),
        };
        let (d, size) = put_blob(dir, &data);
        layer_digests.push(d.clone());
        layer_descs
            .push(serde_json::json!({"mediaType": mt, "digest": d.to_string(), "size": size}));
    }
    let mut cfg = serde_json::json!({
        "Cmd": img.cmd,
        "Env": img.env,
        "Labels": {"test": img.label},
    });
    if let Some(ep) = &img.entrypoint {
        cfg["Entrypoint"] = serde_json::json!(ep);
    }
    if let Some(u) = &img.user {
        cfg["User"] = serde_json::json!(u);
    }
    if let Some(w) = &img.workdir {
        cfg["WorkingDir"] = serde_json::json!(w);
    }
    let config = serde_json::json!({
        "created": "2024-01-02T03:04:05Z",
        "architecture": img.arch,
        "os": "linux",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "husk test"}],
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let (cd, csize) = put_blob(dir, &config_bytes);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": csize},
        "layers": layer_descs,
    });
    let mb = serde_json::to_vec(&manifest).unwrap();
    let (md, mlen) = put_blob(dir, &mb);
    Written {
        manifest: md,
        manifest_len: mlen,
        config: cd,
        layers: layer_digests,
    }
}

/// Writes an OCI layout with one image tagged `tag`.
pub fn oci_layout(dir: &Path, tag: &str, img: &ImageSpec) -> Written {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let w = write_image(dir, img);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": w.manifest.to_string(),
            "size": w.manifest_len,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    w
}

/// Writes an OCI layout whose `tag` is a multi-arch index over `imgs`. Returns the
/// index digest and each image's blobs.
pub fn oci_layout_multi(dir: &Path, tag: &str, imgs: &[ImageSpec]) -> (Digest, Vec<Written>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut entries = Vec::new();
    let mut written = Vec::new();
    for img in imgs {
        let w = write_image(dir, img);
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": w.manifest.to_string(),
            "size": w.manifest_len,
            "platform": {"architecture": img.arch, "os": "linux"},
        }));
        written.push(w);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let ib = serde_json::to_vec(&index).unwrap();
    let (id, ilen) = put_blob(dir, &ib);
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": id.to_string(),
            "size": ilen,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    (id, written)
}

pub fn skopeo(args: &[&str]) {
    let bin = require("skopeo", "skopeo");
    let out = Command::new(bin)
        .args(["--insecure-policy"])
        .args(args)
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs skopeo and returns its stdout.
pub fn skopeo_output(args: &[&str]) -> String {
    let bin = require("skopeo", "skopeo");
    let out = Command::new(bin)
        .args(["--insecure-policy"])
        .args(args)
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Pushes an OCI layout's `tag` to `dest` (`127.0.0.1:PORT/repo:tag`).
pub fn push(layout: &Path, tag: &str, dest: &str, creds: Option<&str>, all: bool) {
    let src = format!("oci:{}:{tag}", layout.display());
    let dst = format!("docker://{dest}");
    let mut args = vec!["copy", "--dest-tls-verify=false", "--quiet"];
    if all {
        args.push("--all");
    }
    if let Some(c) = creds {
        args.push("--dest-creds");
        args.push(c);
    }
    args.push(&src);
    args.push(&dst);
    skopeo(&args);
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A docker-registry process on 127.0.0.1.
pub struct Registry {
    pub port: u16,
    pub dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

impl Registry {
    /// Starts a registry storing under `dir`; with `htpasswd`, Basic auth is required.
    pub fn start(dir: &Path, htpasswd: Option<(&str, &str)>) -> Registry {
        let bin = require("docker-registry", "docker-registry");
        let port = free_port();
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some((user, pass)) = htpasswd {
            let tool = require("htpasswd", "apache2-utils");
            let out = Command::new(tool)
                .args(["-Bbn", user, pass])
                .output()
                .unwrap();
            assert!(out.status.success());
            let file = dir.join("htpasswd");
            std::fs::write(&file, &out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: husk-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let _ = bin;
        let mut r = Registry {
            port,
            dir: dir.to_path_buf(),
            config: config_path,
            child: None,
        };
        r.restart();
        r
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// (Re)starts the process on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        let bin = require("docker-registry", "docker-registry");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(c) = &mut self.child
                && let Ok(Some(status)) = c.try_wait()
            {
                let mut err = String::new();
                if let Some(mut e) = c.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("docker-registry exited ({status}): {err}");
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The registry's on-disk data file for a blob.
    pub fn blob_file(&self, d: &Digest) -> PathBuf {
        self.dir
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&d.hex()[..2])
            .join(d.hex())
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Registry options that allow plain HTTP to `host`, with credentials in `auth`.
pub fn opts(host: &str, auth: Option<PathBuf>) -> husk_image::RegistryOptions {
    husk_image::RegistryOptions {
        insecure_registries: vec![host.to_string()],
        credentials_file: auth,
        ..Default::default()
    }
}

/// Every file under `dir` (relative path → bytes or link target), for before/after checks.
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut std::collections::BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_path_buf();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.file_type().is_symlink() {
                let mut v = b"link:".to_vec();
                v.extend_from_slice(
                    std::fs::read_link(&p)
                        .unwrap()
                        .as_os_str()
                        .as_encoded_bytes(),
                );
                out.insert(rel, v);
            } else if md.is_dir() {
                out.insert(rel.clone(), b"dir".to_vec());
                walk(base, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// A bearer-token front for a registry: `/token` hands out a token (optionally only to
/// Basic credentials), every other request needs it and is forwarded to the registry.
/// This is the Docker Hub auth flow (registry + token service) on loopback.
pub struct TokenFront {
    pub port: u16,
    pub token_requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

pub const FRONT_TOKEN: &str = "husk-test-token";

impl TokenFront {
    pub fn start(upstream: u16, basic: Option<&str>) -> TokenFront {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let token_requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let basic = basic.map(|b| format!("Basic {b}"));
        let (reqs, st) = (token_requests.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (reqs, basic) = (reqs.clone(), basic.clone());
                        std::thread::spawn(move || {
                            serve(conn, port, upstream, &reqs, basic.as_deref())
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TokenFront {
            port,
            token_requests,
            stop,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TokenFront {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn respond(conn: &mut TcpStream, status: &str, extra: &str, body: &str) {
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
}

fn serve(
    mut conn: TcpStream,
    port: u16,
    upstream: u16,
    reqs: &std::sync::Mutex<Vec<String>>,
    basic: Option<&str>,
) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("").to_string();
    let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
    let headers: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    let auth = headers
        .iter()
        .find_map(|h| {
            h.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        })
        .map(|(_, v)| v.trim().to_string());
    if path.starts_with("/token") {
        reqs.lock()
            .unwrap()
            .push(format!("{path} auth={}", auth.clone().unwrap_or_default()));
        if let Some(b) = basic
            && auth.as_deref() != Some(b)
        {
            respond(
                &mut conn,
                "401 Unauthorized",
                "",
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
            );
            return;
        }
        respond(
            &mut conn,
            "200 OK",
            "",
            &format!(r#"{{"token":"{FRONT_TOKEN}","expires_in":300}}"#),
        );
        return;
    }
    if auth.as_deref() != Some(&format!("Bearer {FRONT_TOKEN}")) {
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"husk-test\"\r\n"
        );
        respond(
            &mut conn,
            "401 Unauthorized",
            &challenge,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        );
        return;
    }
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let mut fwd = format!("{request_line}\r\n");
    for h in &headers {
        let k = h.split(':').next().unwrap_or("").trim();
        if k.eq_ignore_ascii_case("authorization") || k.eq_ignore_ascii_case("connection") {
            continue;
        }
        fwd.push_str(h);
        fwd.push_str("\r\n");
    }
    fwd.push_str("Connection: close\r\n\r\n");
    if up.write_all(fwd.as_bytes()).is_err() {
        return;
    }
    let _ = std::io::copy(&mut up, &mut conn);
}

/// This machine's first non-loopback IPv4 address (from `hostname -I`), for
/// reaching a loopback service the way a remote registry is reached. Fails
/// loudly (or, with `HUSK_ALLOW_SKIP=1`, returns `None` after a SKIPPED line)
/// when there is none.
pub fn non_loopback_ipv4(test: &str) -> Option<std::net::Ipv4Addr> {
    let out = Command::new("hostname").arg("-I").output().ok();
    let found = out.and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter_map(|w| w.parse::<std::net::Ipv4Addr>().ok())
            .find(|ip| !ip.is_loopback())
    });
    if found.is_none() {
        eprintln!("SKIPPED {test}: needs a non-loopback IPv4 address (hostname -I shows none)");
        assert!(
            std::env::var_os("HUSK_ALLOW_SKIP").is_some_and(|v| v == "1"),
            "SKIPPED {test}: no non-loopback IPv4 address; set HUSK_ALLOW_SKIP=1 to accept the skip"
        );
    }
    found
}

/// Forwards TCP connections from `ip:<port>` to `127.0.0.1:upstream`, byte for byte
/// (a registry reached by a non-loopback address). Stops accepting when dropped.
pub struct Forward {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Forward {
    pub fn start(ip: std::net::Ipv4Addr, upstream: u16) -> Forward {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue;
                        };
                        let (mut a, mut b) = (conn.try_clone().unwrap(), up.try_clone().unwrap());
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut a, &mut b);
                            let _ = b.shutdown(std::net::Shutdown::Write);
                        });
                        let (mut c, mut d) = (up, conn);
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut c, &mut d);
                            let _ = d.shutdown(std::net::Shutdown::Write);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Forward { port, stop }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
