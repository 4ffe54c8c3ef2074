//! `husk build` end to end with real microVMs, in one test so the VM boots
//! are few (each costs 25-60 s on PVM hosts): a multi-stage Dockerfile (RUN,
//! COPY --from, ENV, ARG, WORKDIR, USER, CMD, ENTRYPOINT, `.dockerignore`)
//! builds and `husk run` of the result prints what it arranged; a file a
//! later RUN removed is absent; the second build is all cache, boots no VM
//! and gives the same image id; a failing RUN shows its output, exits with
//! its code and tags nothing. Four boots in all.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use husk_e2e::{agent_binary, busybox_rootfs, guest_kernel, require_kvm};

struct Husk {
    root: std::path::PathBuf,
}

impl Husk {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_husk"));
        c.arg("--root").arg(&self.root).args(args);
        c
    }

    fn out(&self, args: &[&str]) -> Output {
        let t = Instant::now();
        let o = self.cmd(args).stdin(Stdio::null()).output().unwrap();
        eprintln!(
            "husk {} -> {:?} in {:.1} s\n--- stdout\n{}--- stderr\n{}",
            args.join(" "),
            o.status.code(),
            t.elapsed().as_secs_f64(),
            text(&o.stdout),
            text(&o.stderr)
        );
        o
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.out(args);
        assert!(o.status.success(), "husk {args:?} failed");
        text(&o.stdout)
    }

    /// `husk build` with the test's kernel and agent.
    fn build(&self, extra: &[&str], context: &Path) -> Output {
        let kernel = guest_kernel().display().to_string();
        let agent = agent_binary().display().to_string();
        let ctx = context.display().to_string();
        let mut args = vec!["build", "--kernel", &kernel, "--agent", &agent, "-m", "128"];
        args.extend_from_slice(extra);
        args.push(&ctx);
        self.out(&args)
    }
}

impl Drop for Husk {
    fn drop(&mut self) {
        if let Ok(o) = self.cmd(&["ps", "-aq"]).output() {
            for id in text(&o.stdout).lines() {
                let _ = self.cmd(&["rm", "-f", id]).output();
            }
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write(dir: &Path, rel: &str, data: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

const DOCKERFILE: &str = r#"# syntax=docker/dockerfile:1
ARG BASE=bb
FROM ${BASE} AS build
ARG GREETING=hello
WORKDIR /src
COPY app/ ./
RUN echo "$GREETING from $(cat name.txt)" > out.txt && ls > listing.txt

FROM ${BASE}
ENV WHO=world
COPY some-file /etc/some-file
WORKDIR /app
COPY --from=build /src/out.txt /src/listing.txt ./
COPY --chown=65534:65534 greet.sh ./
RUN rm /etc/some-file && chmod 755 greet.sh
USER nobody
ENTRYPOINT ["/bin/sh", "/app/greet.sh"]
CMD ["default-arg"]
"#;

const GREET: &str = r#"echo "arg=$1 who=$WHO pwd=$(pwd) uid=$(id -u)"
cat /app/out.txt
echo "listing: $(cat /app/listing.txt | tr '\n' ' ')"
if [ -e /etc/some-file ]; then echo "some-file present"; else echo "some-file absent"; fi
"#;

#[test]
fn build_run_cache_and_a_failing_step() {
    require_kvm();
    let t0 = Instant::now();
    let scratch = husk_e2e::scratch("build-e2e");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let h = Husk {
        root: scratch.join("store"),
    };
    h.ok(&[
        "import",
        &busybox_rootfs().display().to_string(),
        "bb",
        "--cmd",
        "sh",
    ]);

    let ctx = scratch.join("ctx");
    write(&ctx, "Dockerfile", DOCKERFILE);
    write(&ctx, "app/name.txt", "the build stage\n");
    write(&ctx, "app/secret.key", "must not be copied\n");
    write(&ctx, ".dockerignore", "**/*.key\n");
    write(&ctx, "some-file", "to be removed\n");
    write(&ctx, "greet.sh", GREET);

    // First build: two RUN steps, two VMs.
    let t = Instant::now();
    let o = h.build(&["-t", "greeter:v1", "--build-arg", "GREETING=hi"], &ctx);
    let first = text(&o.stdout);
    assert!(o.status.success(), "the build failed");
    eprintln!("cold build: {:.1} s", t.elapsed().as_secs_f64());
    assert!(
        first.starts_with("Step 1/15 : FROM ${BASE} AS build\n"),
        "{first}"
    );
    assert!(first.contains("Step 5/15 : RUN echo"), "{first}");
    assert_eq!(first.matches(" ---> Running in ").count(), 2, "{first}");
    assert_eq!(first.matches("Removing intermediate container").count(), 2);
    assert!(
        first.contains("Successfully tagged greeter:v1\n"),
        "{first}"
    );
    let id = first
        .lines()
        .find_map(|l| l.strip_prefix("Successfully built "))
        .expect("an id")
        .to_string();
    assert_eq!(id.len(), 12);
    // No container is left behind.
    assert_eq!(h.ok(&["ps", "-aq"]), "");

    // husk run of the result prints what the Dockerfile arranged.
    let kernel = guest_kernel().display().to_string();
    let agent = agent_binary().display().to_string();
    let run = h.ok(&[
        "run",
        "--rm",
        "--kernel",
        &kernel,
        "--agent",
        &agent,
        "-m",
        "128",
        "greeter:v1",
    ]);
    let lines: Vec<&str> = run.lines().collect();
    assert_eq!(
        lines,
        vec![
            "arg=default-arg who=world pwd=/app uid=65534",
            "hi from the build stage",
            "listing: listing.txt name.txt out.txt ",
            "some-file absent",
        ],
        "{run}"
    );

    // The config and history, as skopeo and Docker read them.
    let inspect: serde_json::Value =
        serde_json::from_str(&h.ok(&["image", "inspect", "greeter:v1"])).unwrap();
    let history = h.ok(&["history", "--no-trunc", "greeter:v1"]);
    assert!(history.contains("RUN rm /etc/some-file"), "{history}");
    eprintln!("{}", serde_json::to_string_pretty(&inspect).unwrap());
    let archive = scratch.join("greeter.tar");
    h.ok(&["save", "-o", &archive.display().to_string(), "greeter:v1"]);
    let sk = Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("docker-archive:{}", archive.display()))
        .output()
        .expect("skopeo is installed by ./dev setup");
    assert!(sk.status.success(), "skopeo: {}", text(&sk.stderr));
    let cfg: serde_json::Value = serde_json::from_slice(&sk.stdout).unwrap();
    assert_eq!(cfg["config"]["User"], "nobody");
    assert_eq!(cfg["config"]["WorkingDir"], "/app");

    // The second build: all cache, no VM, the same image id.
    let t = Instant::now();
    let o = h.build(&["-t", "greeter:v2", "--build-arg", "GREETING=hi"], &ctx);
    let second = text(&o.stdout);
    let cached_s = t.elapsed().as_secs_f64();
    eprintln!("cached build: {cached_s:.2} s");
    assert!(o.status.success());
    assert!(!second.contains("Running in"), "{second}");
    assert_eq!(second.matches(" ---> Using cache").count(), 12, "{second}");
    assert!(
        second.contains(&format!("Successfully built {id}\n")),
        "{second}"
    );
    assert!(cached_s < 20.0, "a cached build took {cached_s} s");

    // A failing RUN: its output, its exit code, no image tagged, no
    // container left.
    write(
        &ctx,
        "Dockerfile.fail",
        "FROM bb\nRUN echo before the failure && echo to-stderr >&2 && exit 3\nCMD [\"true\"]\n",
    );
    let df = ctx.join("Dockerfile.fail").display().to_string();
    let o = h.build(&["-t", "broken:v1", "-f", &df], &ctx);
    assert_eq!(o.status.code(), Some(3));
    assert!(text(&o.stdout).contains("before the failure"));
    let err = text(&o.stderr);
    assert!(err.contains("to-stderr"), "{err}");
    assert!(err.contains("returned a non-zero code: 3"), "{err}");
    let images = h.ok(&["images"]);
    assert!(!images.contains("broken"), "{images}");
    assert_eq!(h.ok(&["ps", "-aq"]), "");
    eprintln!("build e2e: {:.1} s in all", t0.elapsed().as_secs_f64());
}
