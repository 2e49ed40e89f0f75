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
    // --json counts mounted bytes apart from skipped ones.
    let again = format!("{}/again/app:1", registry.addr());
    let json = ok(&env, "store", &["push", "--json", "--mount-from", "team/app", "app:1", &again]);
    let summary: serde_json::Value = serde_json::from_str(json.lines().last().unwrap()).unwrap();
    assert_eq!((&summary["blobs_mounted"], &summary["blobs_skipped"]), (&3.into(), &0.into()));
    assert_eq!(summary["bytes_skipped"], 0, "{json}");
    assert!(summary["bytes_mounted"].as_u64().unwrap() > 0, "{json}");
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

/// An image `name` in the store `root` whose one layer is `mib` MiB of random bytes (gzip
/// cannot shrink them, so the layer is that large on the wire too).
fn random_image(env: &TestEnv, root: &str, name: &str, mib: usize) {
    let dir = env.path().join(format!("random-{name}").replace([':', '/'], "-"));
    fs::create_dir_all(&dir).unwrap();
    let mut bytes = vec![0u8; mib << 20];
    let mut urandom = fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut urandom, &mut bytes).unwrap();
    fs::write(dir.join("random.bin"), &bytes).unwrap();
    let dir = dir.file_name().unwrap().to_str().unwrap().to_string();
    ok(env, root, &["import", &dir, name]);
}

/// The registry's copy of a blob, by digest.
fn registry_blob(registry: &Registry, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    registry.storage.join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
}

/// Each line of `stdout` as a JSON object.
fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

#[test]
fn a_chunked_push_reaches_the_registry_whole_and_json_counts_what_moved() {
    let test = "a_chunked_push_reaches_the_registry_whole_and_json_counts_what_moved";
    let env = TestEnv::new();
    let Some(registry) = registry(test, &env) else { return };
    // 3 MiB and a bit in 512 KiB chunks: seven PATCHes, the last one short.
    random_image(&env, "store", "rnd:1", 3);
    let target = format!("{}/team/rnd:1", registry.addr());

    let pushed = ok(&env, "store", &["push", "--chunk-size", "512K", "--json", "rnd:1", &target]);
    let events = json_lines(&pushed);
    let (blobs, summary) = events.split_at(events.len() - 1);
    let summary = &summary[0];
    assert_eq!(blobs.len(), 2, "config and layer:\n{pushed}");
    assert_eq!(summary["event"], "pushed", "{pushed}");
    let mut sent_bytes = 0;
    for blob in blobs {
        assert_eq!(blob["event"], "blob");
        assert_eq!(blob["moved"], "sent", "{pushed}");
        // The registry has it whole: its size, and bytes that hash to its digest (the
        // registry checked that on the final PUT; its size here shows no chunk went twice).
        let digest = blob["digest"].as_str().unwrap();
        let stored = fs::metadata(registry_blob(&registry, digest)).unwrap().len();
        assert_eq!(serde_json::json!(stored), blob["size"], "{digest}");
        sent_bytes += stored;
    }
    assert!(sent_bytes > 3 << 20, "the layer is at least 3 MiB: {sent_bytes}");
    assert_eq!(summary["blobs_sent"], 2);
    assert_eq!(summary["bytes_sent"], sent_bytes);
    assert_eq!(summary["blobs_skipped"], 0);
    assert_eq!(summary["blobs_mounted"], 0);
    assert_eq!(summary["reference"], target);
    assert!(registry.upload_sessions("team/rnd").is_empty());

    // Pulled back into another store: the same manifest, and every blob the same bytes.
    let pulled = json_lines(&ok(&env, "other", &["pull", "--json", &target]));
    let last = pulled.last().unwrap();
    assert_eq!(last["event"], "pulled");
    assert_eq!(last["digest"], summary["digest"], "the same manifest");
    assert_eq!(last["bytes_fetched"], sent_bytes);
    assert_eq!(last["blobs_fetched"], 2);
    for blob in &pulled[..pulled.len() - 1] {
        assert_eq!(blob["moved"], "fetched");
        let hex = blob["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap();
        let ours = fs::read(env.path().join("store/blobs/sha256").join(hex)).unwrap();
        let theirs = fs::read(env.path().join("other/blobs/sha256").join(hex)).unwrap();
        assert!(ours == theirs, "blob {hex} differs after the round trip");
    }
    // Again: everything already here, counted in bytes too.
    let again = json_lines(&ok(&env, "other", &["pull", "--json", &target]));
    let last = again.last().unwrap();
    assert_eq!((&last["blobs_fetched"], &last["blobs_skipped"]), (&0.into(), &2.into()));
    assert_eq!(last["bytes_skipped"], sent_bytes);
    let lines = ok(&env, "other", &["pull", &target]);
    assert!(lines.contains(&format!("2 already here ({})", size_text(sent_bytes))), "{lines}");

    // Another reader sees the manifest we pushed under the tag (skopeo is in the setup: CI
    // has it).
    if host_has("skopeo") || in_ci() {
        let source = format!("docker://{target}");
        let inspected =
            run(Command::new("skopeo").args(["inspect", "--tls-verify=false", &source]));
        assert_eq!(code(&inspected), 0, "{}", text(&inspected.stderr));
        let value: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
        assert_eq!(value["Digest"], summary["digest"]);
    }

    // --monolithic: the same image, every blob in one PUT, lands as the same manifest.
    let mono = format!("{}/team/mono:1", registry.addr());
    let pushed =
        json_lines(&ok(&env, "store", &["push", "--monolithic", "--json", "rnd:1", &mono]));
    assert_eq!(pushed.last().unwrap()["digest"], summary["digest"]);
    assert_eq!(pushed.last().unwrap()["bytes_sent"], sent_bytes);
    assert!(registry.upload_sessions("team/mono").is_empty());
}

/// `format_size`'s spelling, as the summary lines use it.
fn size_text(bytes: u64) -> String {
    libisolab::cgroups::format_size(bytes)
}

/// A push or pull running in the background, its stdout read line by line; killed and reaped
/// when dropped (a failed assertion leaves no process behind).
struct Running {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Running {
    fn start(env: &TestEnv, root: &str, args: &[&str]) -> Running {
        let mut child = env
            .cmd(STAGE)
            .args(["--root", root])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start stage5-images");
        let stdout = child.stdout.take().unwrap();
        Running { child, lines: std::io::BufRead::lines(std::io::BufReader::new(stdout)) }
    }

    /// Waits for its first line of output, then sends it `signal`; its exit code and stderr.
    fn interrupt_after_first_line(mut self, signal: nix::sys::signal::Signal) -> (i32, String) {
        let first = self.lines.next().expect("a first line").expect("readable");
        assert!(first.starts_with("sent") || first.starts_with("fetched"), "{first}");
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("kill");
        let rest: Vec<String> = self.lines.by_ref().map_while(Result::ok).collect();
        let status = self.child.wait().expect("wait");
        let mut stderr = String::new();
        std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        let finished = |line: &String| line.starts_with("pushed") || line.starts_with("pulled");
        assert!(!rest.iter().any(finished), "it finished: {rest:?}");
        (status.code().unwrap_or(-1), stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_interrupted_push_or_pull_leaves_nothing_half_done_and_resumes() {
    let test = "an_interrupted_push_or_pull_leaves_nothing_half_done_and_resumes";
    let env = TestEnv::new();
    let Some(registry) = registry(test, &env) else { return };
    random_image(&env, "store", "big:1", 64);
    let target = format!("{}/team/big:1", registry.addr());
    // No --chunk-size: the default (16M) sends the 64 MiB layer in four pieces.
    let push = ["push", "big:1", target.as_str()];

    // Ctrl-C once the config is across, while the layer goes.
    let (status, stderr) = Running::start(&env, "store", &push)
        .interrupt_after_first_line(nix::sys::signal::Signal::SIGINT);
    assert_eq!(status, 130, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("interrupted: "), "{stderr}");
    assert!(stderr.contains("1 blob already there is not sent again"), "{stderr}");
    assert_eq!(registry.upload_sessions("team/big"), Vec::<String>::new(), "session cancelled");
    let tags = registry.storage.join("docker/registry/v2/repositories/team/big/_manifests/tags");
    assert!(!tags.join("1").exists(), "nothing tagged on the registry");

    // Again: the config is skipped, the layer sent whole.
    let again = ok(&env, "store", &push);
    assert_eq!(lines_of(&again, "skipped").len(), 1, "{again}");
    assert_eq!(lines_of(&again, "sent").len(), 1, "{again}");
    assert!(again.contains("1 blob sent") && again.contains("1 skipped"), "{again}");
    assert!(registry.upload_sessions("team/big").is_empty());

    // A pull stopped by SIGTERM after the config: no partial blob, no tag.
    let (status, stderr) = Running::start(&env, "other", &["pull", &target])
        .interrupt_after_first_line(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(status, 143, "128 + SIGTERM: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("interrupted: nothing was tagged"), "{stderr}");
    assert!(stderr.contains("1 blob already here is not fetched again"), "{stderr}");
    let blobs = env.path().join("other/blobs/sha256");
    assert!(partials(&blobs).is_empty(), "partial files left: {:?}", partials(&blobs));
    let images = ok(&env, "other", &["images"]);
    assert_eq!(images.lines().count(), 1, "the header only: {images}");

    // Again: the config is already here, the layer is fetched; then it is tagged.
    let pulled = ok(&env, "other", &["pull", &target]);
    assert_eq!(lines_of(&pulled, "fetched").len(), 1, "{pulled}");
    assert!(pulled.contains("1 blob fetched") && pulled.contains("1 already here"), "{pulled}");
    assert_eq!(summary_digest(&pulled), summary_digest(&again));
    assert!(ok(&env, "other", &["images"]).contains("team/big"));
}

#[test]
fn a_registry_that_stalls_is_one_line_naming_the_url_after_the_timeout() {
    let env = TestEnv::new();
    if !require_root("a_registry_that_stalls_is_one_line_naming_the_url_after_the_timeout") {
        return;
    }
    // A listener that takes connections (the kernel accepts them into its backlog) and never
    // answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let started = std::time::Instant::now();
    let output =
        stage5(&env, "store", &["pull", "--timeout", "1", &format!("127.0.0.1:{port}/x:1")]);
    let waited = started.elapsed();
    let stderr = text(&output.stderr);
    assert_eq!(code(&output), 125, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("http://127.0.0.1:{port}/v2/")), "{stderr}");
    assert!(stderr.contains("timed out") && stderr.contains("--timeout"), "{stderr}");
    assert!(waited < std::time::Duration::from_secs(10), "waited {waited:?}");
    drop(listener);
}

#[test]
fn on_a_terminal_each_blob_has_a_progress_bar_that_ends_as_its_line() {
    let test = "on_a_terminal_each_blob_has_a_progress_bar_that_ends_as_its_line";
    let env = TestEnv::new();
    let Some(registry) = registry(test, &env) else { return };
    random_image(&env, "store", "big:1", 48);
    let target = format!("{}/team/tty:1", registry.addr());
    // script(1) gives the push a terminal for stdout and stderr, and copies what it wrote.
    let push = format!("{} --root store push --chunk-size 1M big:1 {target}", bin(STAGE).display());
    let output = run(Command::new("script")
        .args(["-qec", &push, "/dev/null"])
        .current_dir(env.path())
        .env("ISOLAB_USERNS_DIR", env.path().join("userns")));
    let shown = text(&output.stdout);
    assert_eq!(code(&output), 0, "{shown}");
    // The bar while the layer moves: its word, short digest, bar, bytes and rate.
    assert!(shown.contains("sending  sha256:"), "no bar drawn: {shown:?}");
    assert!(shown.contains(" MiB/48."), "no bytes done/total: {shown:?}");
    assert!(shown.contains("MiB/s"), "no rate: {shown:?}");
    // Each bar ends as the blob's line, and the summary follows.
    assert!(shown.contains("sent     sha256:"), "{shown:?}");
    assert!(shown.contains(&format!("pushed {target}")), "{shown:?}");
}
