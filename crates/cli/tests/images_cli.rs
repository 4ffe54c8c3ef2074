//! The image-sharing commands end to end, without booting: import, save,
//! load into a fresh store, history, system df, image prune.

use std::process::{Command, Output, Stdio};

fn husk(root: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_husk"))
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run husk")
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn save_load_history_df_prune() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rootdir");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::write(dir.join("bin/hello"), vec![b'x'; 2000]).unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let id = ok(&husk(&a, &["import", dir.to_str().unwrap(), "demo:1"]));
    let id = id.trim();
    let file = tmp.path().join("demo.tar");
    ok(&husk(&a, &["save", "-o", file.to_str().unwrap(), "demo:1"]));
    let piped = husk(&a, &["save", "demo:1"]);
    ok(&piped);
    assert_eq!(piped.stdout, std::fs::read(&file).unwrap());
    assert_eq!(
        ok(&husk(&b, &["load", "-i", file.to_str().unwrap()])),
        "Loaded image: demo:1\n"
    );
    let q = ok(&husk(&b, &["history", "-q", "--no-trunc", "demo:1"]));
    assert_eq!(q.trim(), id);
    let h = ok(&husk(&b, &["history", "demo:1"]));
    assert!(h.starts_with("IMAGE          CREATED   CREATED BY"), "{h}");
    assert!(h.contains("2kB"), "{h}");
    let images = ok(&husk(&b, &["images"]));
    assert!(images.contains("2kB"), "unpacked size: {images}");
    let df = ok(&husk(&b, &["system", "df"]));
    assert!(
        df.contains("Images          1         0         2kB       2kB (100%)"),
        "{df}"
    );
    // Nothing dangling; -a removes it (no container uses it).
    assert_eq!(
        ok(&husk(&b, &["image", "prune", "-f"])),
        "Total reclaimed space: 0B\n"
    );
    let p = ok(&husk(&b, &["image", "prune", "-a", "-f"]));
    assert_eq!(
        p,
        format!("Deleted Images:\nuntagged: demo:1\ndeleted: {id}\n\nTotal reclaimed space: 2kB\n")
    );
    // Without -f and no "y" on stdin: nothing is removed.
    ok(&husk(&a, &["image", "prune", "-a"]));
    assert!(ok(&husk(&a, &["images"])).contains("demo"));
    assert_eq!(
        ok(&husk(&a, &["container", "prune", "-f"])),
        "Total reclaimed space: 0B\n"
    );
    // system prune: -f, nothing stopped, no networks, nothing dangling.
    assert_eq!(
        ok(&husk(&a, &["system", "prune", "-f"])),
        "Total reclaimed space: 0B\nTotal reclaimed space: 0B\n"
    );
    // Errors: unknown image, unknown container.
    let o = husk(&a, &["save", "-o", file.to_str().unwrap(), "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("No such image: nope"));
    let o = husk(&a, &["commit", "nosuch"]);
    assert_eq!(o.status.code(), Some(1));
    let o = husk(&a, &["export", "nosuch"]);
    assert_eq!(o.status.code(), Some(1));
}
