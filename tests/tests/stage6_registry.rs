//! Push and pull end to end: the real `stage5-images` against a real registry (Debian's CNCF
//! `docker-registry`, 2.8, started by each test on 127.0.0.1 with its storage in the test's
//! directory), and skopeo reading what isolab pushed.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use isolab_tests::*;

const STAGE: &str = "stage5-images";

/// A registry for `test`, or a skip (a failure under CI) when none can run here.
fn registry(test: &str, env: &TestEnv) -> Option<Registry> {
    if !require_root(test) {
        return None;
    }
    if !Registry::available() {
        skip(test, "the whole test", "docker-registry is not installed (scripts/setup does it)");
        return None;
    }
    Some(Registry::start(env))
}

/// stage5-images with `--root <root>` and `args`; its output.
fn stage5(env: &TestEnv, root: &str, args: &[&str]) -> Output {
    run(env.cmd(STAGE).args(["--root", root]).args(args))
}

/// [`stage5`], which must succeed; its stdout.
fn ok(env: &TestEnv, root: &str, args: &[&str]) -> String {
    let output = stage5(env, root, args);
    assert_eq!(code(&output), 0, "{args:?}: {}{}", text(&output.stdout), text(&output.stderr));
    text(&output.stdout)
}

/// A busybox image `name` in the store `root`, from a rootfs built once per test.
fn import(env: &TestEnv, root: &str, name: &str) {
    if !env.path().join("rootfs").exists() {
        env.namespaced_rootfs("rootfs");
    }
    ok(env, root, &["import", "rootfs", name]);
}

/// The lines of a push or pull that start with `word` (`sent`, `skipped`, `fetched`, …).
fn lines_of<'a>(stdout: &'a str, word: &str) -> Vec<&'a str> {
    stdout.lines().filter(|line| line.split_whitespace().next() == Some(word)).collect()
}

/// The manifest digest the summary line names.
fn summary_digest(stdout: &str) -> String {
    let summary = stdout.lines().last().expect("a summary line");
    let digest = summary.split_whitespace().find(|word| word.starts_with("sha256:"));
    digest.expect("a digest in the summary").trim_end_matches(':').to_string()
}

/// The names in `dir` that are not blobs (`.partial-` files a failed write left).
fn partials(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn push_pull_and_run_with_only_missing_blobs_travelling() {
    let env = TestEnv::new();
    let Some(registry) = registry("push_pull_and_run_with_only_missing_blobs_travelling", &env)
    else {
        return;
    };
    import(&env, "store", "bb:1");
    let target = format!("{}/team/bb:1", registry.addr());

    let first = ok(&env, "store", &["push", "bb:1", &target]);
    assert_eq!(lines_of(&first, "sent").len(), 2, "config and layer:\n{first}");
    assert!(first.contains("2 blobs sent"), "{first}");

    // The same image again: nothing travels but the manifest.
    let again = ok(&env, "store", &["push", "bb:1", &target]);
    assert!(lines_of(&again, "sent").is_empty(), "{again}");
    assert_eq!(lines_of(&again, "skipped").len(), 2, "{again}");
    assert!(again.contains("0 blobs sent (0 B)"), "{again}");
    assert_eq!(summary_digest(&first), summary_digest(&again));

    // Into a second store: fetched, verified, tagged as the reference, and it runs.
    let pulled = ok(&env, "other", &["pull", &target]);
    assert_eq!(lines_of(&pulled, "fetched").len(), 2, "{pulled}");
    assert_eq!(summary_digest(&pulled), summary_digest(&first), "the same manifest");
    let images = ok(&env, "other", &["images"]);
    assert!(images.contains(&format!("{}/team/bb", registry.addr())), "{images}");
    let hello = ok(&env, "other", &["run", "--rm", &target, "--", "echo", "hello from a pull"]);
    assert_eq!(hello, "hello from a pull\n");

    // Pulled again: every blob is there already.
    let twice = ok(&env, "other", &["pull", &target]);
    assert!(lines_of(&twice, "fetched").is_empty(), "{twice}");
    assert!(twice.contains("0 blobs fetched"), "{twice}");
    assert!(partials(&env.path().join("other/blobs/sha256")).is_empty());
}

#[test]
fn an_image_sharing_its_base_sends_only_its_new_layer() {
    let env = TestEnv::new();
    let Some(registry) = registry("an_image_sharing_its_base_sends_only_its_new_layer", &env)
    else {
        return;
    };
    import(&env, "store", "base:1");
    // A second image: the base's layer plus one of its own (a committed container's upper).
    ok(&env, "store", &["run", "--name", "c", "base:1", "--", "sh", "-c", "echo new > /new"]);
    ok(&env, "store", &["commit", "c", "app:1"]);
    let repository = format!("{}/team/app", registry.addr());

    let base = ok(&env, "store", &["push", "base:1", &format!("{repository}:base")]);
    let base_layer = lines_of(&base, "sent").last().map(|line| line.to_string()).unwrap();
    let base_layer_digest = base_layer.split_whitespace().nth(1).unwrap();

    // Into the same repository: the new config and the new layer travel, the base's layer is
    // skipped (the registry answers HEAD with 200).
    let pushed = ok(&env, "store", &["push", "app:1", &format!("{repository}:1")]);
    let sent = lines_of(&pushed, "sent");
    let skipped = lines_of(&pushed, "skipped");
    assert_eq!(sent.len(), 2, "the config and the new layer:\n{pushed}");
    assert_eq!(skipped.len(), 1, "the base's layer:\n{pushed}");
    assert!(skipped[0].contains(base_layer_digest), "{pushed}");
    assert!(!sent.iter().any(|line| line.contains(base_layer_digest)), "{pushed}");

    // Into another repository, with --mount-from: the registry links the blobs in, and none
    // of their bytes travel.
    let fresh = format!("{}/fresh/app:1", registry.addr());
    let mounted = ok(&env, "store", &["push", "--mount-from", "team/app", "app:1", &fresh]);
    assert_eq!(lines_of(&mounted, "mounted").len(), 3, "{mounted}");
    assert!(mounted.contains("0 blobs sent (0 B)"), "{mounted}");
}

#[test]
fn skopeo_reads_what_isolab_pushed() {
    let env = TestEnv::new();
    let Some(registry) = registry("skopeo_reads_what_isolab_pushed", &env) else { return };
    if !host_has("skopeo") {
        skip("skopeo_reads_what_isolab_pushed", "the whole test", "skopeo is not installed");
        return;
    }
    import(&env, "store", "bb:1");
    let source = format!("docker://{}/x:1", registry.addr());
    let pushed = ok(&env, "store", &["push", "bb:1", &format!("{}/x:1", registry.addr())]);

    let copied = run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--src-tls-verify=false", &source, "oci:copied:x"])
        .current_dir(env.path()));
    assert_eq!(code(&copied), 0, "{}", text(&copied.stderr));
    let inspected = run(Command::new("skopeo").args(["inspect", "--tls-verify=false", &source]));
    assert_eq!(code(&inspected), 0, "{}", text(&inspected.stderr));
    let value: serde_json::Value = serde_json::from_slice(&inspected.stdout).expect("JSON");
    assert_eq!(value["Digest"], summary_digest(&pushed), "skopeo sees the manifest we pushed");
    // The layout skopeo wrote names the same manifest.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(env.path().join("copied/index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], summary_digest(&pushed));
}

#[test]
fn bad_references_and_dead_registries_are_one_line_and_125() {
    let env = TestEnv::new();
    let Some(registry) = registry("bad_references_and_dead_registries_are_one_line_and_125", &env)
    else {
        return;
    };
    import(&env, "store", "bb:1");
    // A port nothing listens on: bind one, read its number, close it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cases = [
        (
            vec!["push".to_string(), "bb:1".into(), format!("127.0.0.1:{dead}/x:1")],
            "connection refused",
        ),
        (vec!["pull".to_string(), format!("{}/nobody/here:1", registry.addr())], "404 Not Found"),
        (vec!["pull".to_string(), format!("127.0.0.1:{dead}/x:1")], "connection refused"),
        (vec!["pull".to_string(), "no-registry:1".into()], "names no registry"),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let root = if args[0] == "push" { "store" } else { "other" };
        let output = stage5(&env, root, &args);
        let stderr = text(&output.stderr);
        assert_eq!(code(&output), 125, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // Nothing was tagged in the second store.
    let images = ok(&env, "other", &["images"]);
    assert_eq!(images.lines().count(), 1, "the header only: {images}");
}

#[test]
fn a_tampered_blob_on_the_registry_is_named_and_never_stored() {
    let env = TestEnv::new();
    let Some(registry) =
        registry("a_tampered_blob_on_the_registry_is_named_and_never_stored", &env)
    else {
        return;
    };
    import(&env, "store", "bb:1");
    let target = format!("{}/team/bb:1", registry.addr());
    ok(&env, "store", &["push", "bb:1", &target]);

    // The layer's bytes on the registry's disk, one byte flipped (distribution keeps each
    // blob at blobs/sha256/<2 hex>/<hex>/data and never checks it again when serving).
    let layer = lines_of(&ok(&env, "store", &["push", "bb:1", &target]), "skipped")
        .last()
        .and_then(|line| line.split_whitespace().nth(1))
        .expect("the layer's line")
        .to_string();
    let hex = layer.strip_prefix("sha256:").unwrap();
    let data =
        registry.storage.join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]));
    let mut bytes = fs::read(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&data, &bytes).unwrap();

    let output = stage5(&env, "other", &["pull", &target]);
    let stderr = text(&output.stderr);
    assert_eq!(code(&output), 125, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&layer) && stderr.contains("does not match"), "{stderr}");
    let blobs = env.path().join("other/blobs/sha256");
    assert!(!blobs.join(hex).exists(), "the tampered layer is not in the store");
    assert!(partials(&blobs).is_empty(), "no partial file left: {:?}", partials(&blobs));
    let images = ok(&env, "other", &["images"]);
    assert_eq!(images.lines().count(), 1, "nothing tagged: {images}");
}
