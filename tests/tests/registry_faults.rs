//! What push and pull do when the registry, or the way to it, fails: each fault is one line on
//! stderr naming the URL and what failed and what to do, exit 125, nothing printed twice, the
//! store as it was (no tag, no `.partial-` file, no new blob), no connection or process left.
//!
//! Most faults come from a [`FakeRegistry`] (scripted answers on 127.0.0.1, every request
//! recorded): a real registry never sends a 500 on cue, a wrong digest, a body cut short, a
//! redirect to itself or silence. The rest are real: the registry of `docker-registry` for a
//! 404 and for the sessions a failed push must not leave open, a closed port, and an unknown
//! host resolved in an empty network namespace (`unshare -n`), so that no DNS query leaves
//! the machine.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use isolab_tests::*;
use libisolab::digest::Digest;

const STAGE: &str = "stage5-images";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

// Every command runs as the registry tests' client does (`--root`, docker's config of the
// test's own).
use isolab_tests::stage5_images_ok as ok;

/// Root, and the store `root` made (empty, for pulls) or with a busybox image `bb:1` (for
/// pushes); false (a skip, a failure under CI) without root.
fn prepare(test: &str, env: &TestEnv, with_image: bool) -> bool {
    if !require_root(test) {
        return false;
    }
    if with_image {
        env.namespaced_rootfs("rootfs");
        ok(env, "store", &["import", "rootfs", "bb:1"]);
    }
    ok(env, "other", &["images"]);
    true
}

/// Processes working in `dir` (the directory every command of a test runs in): a client that
/// left something running.
fn processes_working_in(dir: &Path) -> Vec<String> {
    let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|entry| {
            std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&real))
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Runs `command` (a push from `store` or a pull into `other`), which must fail as the module
/// says: returns its one line, after checking that it names each of `expected` and that the
/// store did not change.
fn fails(env: &TestEnv, root: &str, command: &mut Command, expected: &[&str]) -> String {
    fails_keeping(env, root, command, expected, &[])
}

/// [`fails`], where the blobs `kept` (digests) may have come in: a pull that fails on a layer
/// keeps the config it fetched before, whole and verified (`registry`'s module doc: a failed
/// pull leaves only whole, verified blobs behind, for the next pull; gc takes them if none).
fn fails_keeping(
    env: &TestEnv,
    root: &str,
    command: &mut Command,
    expected: &[&str],
    kept: &[&str],
) -> String {
    let before = store_state(&env.path().join(root));
    let output = run(command);
    let what = format!("{command:?}");
    let line = failure_line(&output, &what);
    for word in expected {
        assert!(line.contains(word), "{what}: {word:?} is not in: {line}");
    }
    let mut after = store_state(&env.path().join(root));
    let mut before = before;
    for digest in kept {
        let hex = digest.trim_start_matches("sha256:");
        after.remove(&Path::new("blobs/sha256").join(hex));
        // (Already there from an earlier pull, it may stay as it was, too.)
        before.remove(&Path::new("blobs/sha256").join(hex));
    }
    assert!(before == after, "{what} changed the store: {:#?}", state_changes(&before, &after));
    let partials: Vec<String> = names_in(&env.path().join(root).join("blobs/sha256"))
        .into_iter()
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(partials.is_empty(), "{what} left {partials:?}");
    assert!(processes_working_in(env.path()).is_empty(), "{what} left processes running");
    line
}

/// A pull of `reference` into `other` that must fail; see [`fails`].
fn pull_fails(env: &TestEnv, reference: &str, extra: &[&str], expected: &[&str]) -> String {
    pull_fails_keeping(env, reference, extra, expected, &[])
}

/// A pull that must fail, keeping at most the blobs `kept`; see [`fails_keeping`].
fn pull_fails_keeping(
    env: &TestEnv,
    reference: &str,
    extra: &[&str],
    expected: &[&str],
    kept: &[&str],
) -> String {
    let mut command = env.cmd(STAGE);
    command.env("DOCKER_CONFIG", env.path().join("docker")).args(["--root", "other", "pull"]);
    fails_keeping(env, "other", command.args(extra).arg(reference), expected, kept)
}

/// A small image for the fake to serve: a config, one "layer" (bytes: a pull does not unpack),
/// and the manifest naming them.
struct FakeImage {
    manifest: Vec<u8>,
    manifest_digest: String,
    config_digest: String,
    layer: Vec<u8>,
    layer_digest: String,
    blobs: Vec<(String, Vec<u8>)>,
}

fn fake_image() -> FakeImage {
    let layer: Vec<u8> = (0..50_000u32).map(|n| (n * 7 % 251) as u8).collect();
    let layer_digest = Digest::of(&layer).to_string();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    })
    .to_string()
    .into_bytes();
    let config_digest = Digest::of(&config).to_string();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer.len()}],
    })
    .to_string()
    .into_bytes();
    let manifest_digest = Digest::of(&manifest).to_string();
    let blobs = vec![(config_digest.clone(), config), (layer_digest.clone(), layer.clone())];
    FakeImage { manifest, manifest_digest, config_digest, layer, layer_digest, blobs }
}

impl FakeImage {
    /// What a well-behaved registry answers for this image at any tag of `x/y`.
    fn answer(&self, request: &HttpRequest) -> Answer {
        let path = request.path();
        if path == "/v2/" {
            return Answer::json(200, serde_json::json!({}));
        }
        if path.starts_with("/v2/x/y/manifests/") {
            return Answer::status(200)
                .header("Content-Type", OCI_MANIFEST)
                .header("Docker-Content-Digest", &self.manifest_digest)
                .body(self.manifest.clone());
        }
        for (digest, bytes) in &self.blobs {
            if path == format!("/v2/x/y/blobs/{digest}") {
                return Answer::status(200)
                    .header("Content-Type", "application/octet-stream")
                    .body(bytes.clone());
            }
        }
        Answer::error(404, "NAME_UNKNOWN", "no such thing")
    }
}

/// A fake registry serving [`fake_image`], except where `fault` answers (`Some`).
fn fake_with(
    fault: impl Fn(&FakeImage, &HttpRequest) -> Option<Answer> + Send + Sync + 'static,
) -> FakeRegistry {
    let image = fake_image();
    FakeRegistry::start(move |request| {
        fault(&image, request).unwrap_or_else(|| image.answer(request))
    })
}

#[test]
fn pull_faults_from_a_fake_registry_are_one_line_and_leave_the_store_alone() {
    let test = "pull_faults_from_a_fake_registry_are_one_line_and_leave_the_store_alone";
    let env = TestEnv::new();
    if !prepare(test, &env, false) {
        return;
    }
    let image = fake_image();

    // The fake itself works: a pull of it succeeds (into a store of its own).
    let fine = fake_with(|_, _| None);
    let pulled = ok(&env, "scratch", &["pull", &format!("{}/x/y:1", fine.addr())]);
    assert!(pulled.contains(&image.manifest_digest), "{pulled}");
    drop(fine);

    // A 401 with no WWW-Authenticate: nothing to answer, say what to pass.
    let fake = fake_with(|_, request| {
        (request.path() == "/v2/").then(|| Answer::error(401, "UNAUTHORIZED", "who are you"))
    });
    pull_fails(&env, &format!("{}/x/y:1", fake.addr()), &[], &["/v2/", "401", "--creds"]);
    assert!(fake.all_closed());

    // A 500 on the manifest: the registry failed, try later.
    let fake = fake_with(|_, request| {
        request.path().contains("/manifests/").then(|| Answer::error(500, "UNKNOWN", "boom"))
    });
    let line = pull_fails(
        &env,
        &format!("{}/x/y:1", fake.addr()),
        &[],
        &["GET", "/v2/x/y/manifests/1", "500", "try again later"],
    );
    assert!(line.contains("boom"), "the registry's own words: {line}");
    assert!(fake.all_closed());

    // A manifest whose bytes are not what Docker-Content-Digest says.
    let other = Digest::of(b"something else").to_string();
    let announced = other.clone();
    let fake = fake_with(move |image, request| {
        request.path().contains("/manifests/").then(|| {
            Answer::status(200)
                .header("Content-Type", OCI_MANIFEST)
                .header("Docker-Content-Digest", &announced)
                .body(image.manifest.clone())
        })
    });
    pull_fails(
        &env,
        &format!("{}/x/y:1", fake.addr()),
        &[],
        &["/v2/x/y/manifests/1", "Docker-Content-Digest", &other, "nothing was stored"],
    );

    // … or than the digest in the reference.
    let fake = fake_with(|_, _| None);
    pull_fails(
        &env,
        &format!("{}/x/y@{other}", fake.addr()),
        &[],
        &["/v2/x/y/manifests/", "the reference", &other, &image.manifest_digest],
    );

    // A layer of the right length with the wrong bytes.
    let fake = fake_with(|image, request| {
        (request.path().ends_with(&image.layer_digest)).then(|| {
            let mut bytes = image.layer.clone();
            bytes[100] ^= 0xff;
            Answer::status(200).body(bytes)
        })
    });
    pull_fails_keeping(
        &env,
        &format!("{}/x/y:1", fake.addr()),
        &[],
        &[&format!("/v2/x/y/blobs/{}", image.layer_digest), "does not match"],
        &[&image.config_digest],
    );

    // A redirect to itself, for ever.
    let fake = fake_with(|_, request| {
        request
            .path()
            .contains("/manifests/")
            .then(|| Answer::status(307).header("Location", &request.target))
    });
    pull_fails(&env, &format!("{}/x/y:1", fake.addr()), &[], &["/v2/x/y/manifests/1", "redirects"]);
    let redirected = fake.requests().iter().filter(|r| r.path().contains("/manifests/")).count();
    assert!((2..=10).contains(&redirected), "a loop, but a bounded one: {redirected} requests");

    // A registry that accepts the connection and never answers: --timeout 2 ends it.
    let fake = fake_with(|_, request| request.path().contains("/manifests/").then(Answer::silence));
    let started = Instant::now();
    pull_fails(
        &env,
        &format!("{}/x/y:1", fake.addr()),
        &["--timeout", "2"],
        &["/v2/x/y/manifests/1", "timed out", "2 s", "--timeout"],
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "a stall of 2 s took {took:?}");
    assert!(took >= Duration::from_secs(2), "gave up before the timeout: {took:?}");
    assert!(fake.all_closed(), "the stalled connection is closed");

    // Nothing of all that was tagged.
    let images = ok(&env, "other", &["images"]);
    assert_eq!(images.lines().count(), 1, "the header only: {images}");
}

#[test]
fn a_push_whose_blob_upload_fails_cancels_its_session() {
    let test = "a_push_whose_blob_upload_fails_cancels_its_session";
    let env = TestEnv::new();
    if !prepare(test, &env, true) {
        return;
    }
    // The registry opens the session, then fails the PUT of the bytes.
    let fake = FakeRegistry::start(|request| match (request.method.as_str(), request.path()) {
        (_, "/v2/") => Answer::json(200, serde_json::json!({})),
        ("HEAD", _) => Answer::status(404),
        ("POST", "/v2/x/y/blobs/uploads/") => Answer::status(202)
            .header("Location", "/v2/x/y/blobs/uploads/session-1?_state=opaque")
            .header("Docker-Upload-UUID", "session-1"),
        ("PUT", "/v2/x/y/blobs/uploads/session-1") => Answer::error(500, "UNKNOWN", "disk full"),
        ("DELETE", "/v2/x/y/blobs/uploads/session-1") => Answer::status(204),
        _ => Answer::error(404, "NAME_UNKNOWN", "no"),
    });
    let mut command = env.cmd(STAGE);
    command.args(["--root", "store", "push", "bb:1", &format!("{}/x/y:1", fake.addr())]);
    let line = fails(
        &env,
        "store",
        &mut command,
        &["PUT", "/v2/x/y/blobs/uploads/session-1", "500", "disk full", "try again later"],
    );
    assert!(!line.contains("_state"), "the session's query is not shown: {line}");
    let requests: Vec<String> = fake.requests().iter().map(HttpRequest::line).collect();
    let put = requests.iter().position(|line| line.starts_with("PUT"));
    let delete = requests.iter().position(|line| line == "DELETE /v2/x/y/blobs/uploads/session-1");
    assert!(put.is_some() && delete > put, "the session is cancelled after the PUT: {requests:#?}");
    assert!(!requests.iter().any(|line| line.contains("/manifests/")), "{requests:#?}");
    assert!(fake.all_closed());
}

// Were `registry::upload` to open the session before it knew the blob sound, its DELETE
// after the broken PUT could not cancel it:
// distribution 2.8 checks the session's `_state` (offset 0) against the bytes it received and
// answers `404 BLOB_UPLOAD_INVALID` ("upload resumed at wrong offest"), and its own cancel on
// that path runs on a writer it has already closed, so the session stays in `_uploads/` until
// the registry's purge (days). So the push reads the blob whole, checking its digest, before
// its `POST`: the corrupt blob is named and no session is ever opened.
#[test]
fn a_push_that_fails_on_the_real_registry_leaves_no_session_open() {
    let test = "a_push_that_fails_on_the_real_registry_leaves_no_session_open";
    let env = TestEnv::new();
    if !prepare(test, &env, true) {
        return;
    }
    if !Registry::available() {
        skip(test, "the whole test", "docker-registry is not installed (scripts/setup does it)");
        return;
    }
    let registry = Registry::start(&env);
    // The layer in our own store, one byte flipped: streamed as it is, the verifying reader
    // would fail only at its end, with the PUT half-way.
    let manifest = std::fs::read_to_string(env.path().join("store/index.json")).unwrap();
    let index: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_string();
    let blob = |digest: &str| {
        env.path().join("store/blobs/sha256").join(digest.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&manifest_digest)).unwrap()).unwrap();
    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap().to_string();
    let mut bytes = std::fs::read(blob(&layer_digest)).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(blob(&layer_digest), &bytes).unwrap();

    let mut command = env.cmd(STAGE);
    command.args(["--root", "store", "push", "bb:1", &format!("{}/team/bb:1", registry.addr())]);
    let line = fails(
        &env,
        "store",
        &mut command,
        &[&layer_digest, "is corrupt", "pull or load the image again"],
    );
    assert!(!line.contains("_state"), "the session's query is not shown: {line}");
    assert!(
        eventually(Duration::from_secs(5), || registry.upload_sessions("team/bb").is_empty()),
        "sessions left open: {:#?}",
        describe_tree(&registry.storage.join("docker/registry/v2/repositories/team/bb/_uploads"))
            .keys()
            .collect::<Vec<_>>()
    );
    // And no tag on the registry: the manifest was never sent.
    let tags = registry.storage.join("docker/registry/v2/repositories/team/bb/_manifests/tags");
    assert!(names_in(&tags).is_empty(), "{:?}", names_in(&tags));

    // In chunks (no reading ahead then): the reader fails on the last chunk, before it is
    // sent, and the session, whole, is cancelled.
    let mut command = env.cmd(STAGE);
    command.args(["--root", "store", "push", "--chunk-size", "1M", "bb:1"]);
    command.arg(format!("{}/team/chunks:1", registry.addr()));
    fails(&env, "store", &mut command, &[&layer_digest, "is corrupt"]);
    assert!(
        eventually(Duration::from_secs(5), || registry.upload_sessions("team/chunks").is_empty()),
        "sessions left open: {:?}",
        registry.upload_sessions("team/chunks")
    );
}

#[test]
fn unknown_hosts_closed_ports_and_unknown_names_are_one_line_and_125() {
    let test = "unknown_hosts_closed_ports_and_unknown_names_are_one_line_and_125";
    let env = TestEnv::new();
    if !prepare(test, &env, true) {
        return;
    }
    if !Registry::available() {
        skip(test, "the whole test", "docker-registry is not installed (scripts/setup does it)");
        return;
    }
    if !host_has("unshare") {
        skip(test, "the whole test", "unshare (util-linux) is not installed");
        return;
    }
    // An unknown host, looked up in a fresh network namespace with no interface up: the
    // query cannot leave the machine.
    let mut command = Command::new("unshare");
    command
        .arg("-n")
        .arg(bin(STAGE))
        .args(["--root", "other", "pull", "nosuch.invalid:5000/x/y:1"])
        .current_dir(env.path())
        .env("ISOLAB_USERNS_DIR", env.path().join("userns"))
        .env("DOCKER_CONFIG", env.path().join("docker"));
    fails(&env, "other", &mut command, &["https://nosuch.invalid:5000/v2/", "unknown host"]);

    // A port nothing listens on, for a pull and a push.
    let closed = free_port();
    pull_fails(
        &env,
        &format!("127.0.0.1:{closed}/x/y:1"),
        &[],
        &[
            &format!("http://127.0.0.1:{closed}/v2/"),
            "connection refused",
            "check the host and port",
        ],
    );
    let mut command = env.cmd(STAGE);
    command.args(["--root", "store", "push", "bb:1", &format!("127.0.0.1:{closed}/x/y:1")]);
    fails(&env, "store", &mut command, &["connection refused"]);

    // The real registry: an unknown repository, and an unknown tag of a known one.
    let registry = Registry::start(&env);
    let reference = format!("{}/team/bb:1", registry.addr());
    ok(&env, "store", &["push", "bb:1", &reference]);
    for (name, url) in
        [("nobody/here:1", "/v2/nobody/here/manifests/1"), ("team/bb:2", "/v2/team/bb/manifests/2")]
    {
        let line = pull_fails(
            &env,
            &format!("{}/{name}", registry.addr()),
            &[],
            &[url, "404 Not Found", "MANIFEST_UNKNOWN", "check the name"],
        );
        assert!(line.contains("push it first"), "{line}");
    }
    let images = ok(&env, "other", &["images"]);
    assert_eq!(images.lines().count(), 1, "the header only: {images}");
}

// `registry::fetch_blob` streams the body into `Layout::put_blob` through a reader that keeps
// its own error: a body cut short is named by its URL, not as a failed write of the
// `.partial-` file ("write …/.partial-… failed: EIO") that would blame our disk.
#[test]
fn a_layer_cut_short_is_named_by_its_url_and_never_stored() {
    let test = "a_layer_cut_short_is_named_by_its_url_and_never_stored";
    let env = TestEnv::new();
    if !prepare(test, &env, false) {
        return;
    }
    let image = fake_image();
    // A layer cut short: 1000 bytes more announced than sent, then the connection closed.
    let fake = fake_with(|image, request| {
        (request.path().ends_with(&image.layer_digest)).then(|| {
            let half = image.layer[..image.layer.len() / 2].to_vec();
            Answer::status(200).body(half).cut(image.layer.len() as u64 + 1000)
        })
    });
    pull_fails_keeping(
        &env,
        &format!("{}/x/y:1", fake.addr()),
        &[],
        &[&format!("/v2/x/y/blobs/{}", image.layer_digest)],
        &[&image.config_digest],
    );
    assert!(fake.all_closed());
    let names = names_in(&env.path().join("other/blobs/sha256"));
    let config_hex = image.config_digest.trim_start_matches("sha256:");
    assert!(
        names.iter().all(|name| name == config_hex),
        "only the whole, verified config may stay: {names:?}"
    );
}

/// [`fake_image`] with another config and another media type for its layer.
fn odd_image(config: &[u8], layer_type: &str) -> FakeImage {
    let mut image = fake_image();
    let config_digest = Digest::of(config).to_string();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": layer_type, "digest": image.layer_digest,
                    "size": image.layer.len()}],
    })
    .to_string()
    .into_bytes();
    image.manifest_digest = Digest::of(&manifest).to_string();
    image.manifest = manifest;
    image.blobs = vec![
        (config_digest.clone(), config.to_vec()),
        (image.layer_digest.clone(), image.layer.clone()),
    ];
    image.config_digest = config_digest;
    image
}

#[test]
fn a_pulled_image_isolab_cannot_run_is_not_tagged_and_a_broken_tag_stops_nothing() {
    let test = "a_pulled_image_isolab_cannot_run_is_not_tagged_and_a_broken_tag_stops_nothing";
    let env = TestEnv::new();
    if !prepare(test, &env, true) {
        return;
    }
    let gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
    // A config that is JSON but no image config; one that lists no diff_id for the layer;
    // a layer compressed with zstd. Each: whole, verified blobs, but no tag.
    let cases: [(&[u8], &str, &str); 3] = [
        (b"{}", gzip, "not the JSON document expected"),
        (br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#, gzip, "0 diff_ids"),
        (
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#,
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "zstd",
        ),
    ];
    for (config, layer_type, said) in cases {
        let image = odd_image(config, layer_type);
        let kept = [
            image.manifest_digest.clone(),
            image.config_digest.clone(),
            image.layer_digest.clone(),
        ];
        let fake = FakeRegistry::start(move |request| image.answer(request));
        let kept: Vec<&str> = kept.iter().map(String::as_str).collect();
        let line = pull_fails_keeping(
            &env,
            &format!("{}/x/y:1", fake.addr()),
            &[],
            &[said, "nothing was tagged"],
            &kept,
        );
        assert!(line.contains("/x/y:1"), "{line}");
    }

    // A store with such a tag anyway (another tool, an older isolab): `images` lists the
    // others and names the broken one, `rmi` removes it.
    let image = odd_image(b"{}", gzip);
    let manifest = image.manifest.clone();
    let blobs = env.path().join("store/blobs/sha256");
    for (digest, bytes) in
        image.blobs.iter().chain([(image.manifest_digest.clone(), manifest.clone())].iter())
    {
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes).unwrap();
    }
    let index_path = env.path().join("store/index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index["manifests"].as_array_mut().unwrap().push(serde_json::json!({
        "mediaType": OCI_MANIFEST, "digest": image.manifest_digest, "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "broken:1"},
    }));
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    let listed = run(env.cmd(STAGE).args(["--root", "store", "images"]));
    assert_eq!(code(&listed), 0, "{}", text(&listed.stderr));
    assert!(text(&listed.stdout).contains("bb"), "{}", text(&listed.stdout));
    assert!(
        text(&listed.stderr).contains("image broken:1 cannot be read"),
        "{}",
        text(&listed.stderr)
    );
    assert!(text(&listed.stderr).contains("`rmi broken:1` removes it"), "{}", text(&listed.stderr));
    let removed = ok(&env, "store", &["rmi", "broken:1"]);
    assert!(removed.contains("untagged broken:1"), "{removed}");
    let listed = run(env.cmd(STAGE).args(["--root", "store", "images"]));
    assert_eq!(text(&listed.stderr), "", "nothing broken is left");
}

#[test]
fn a_manifest_that_is_too_big_for_the_disk_old_or_mislabelled_is_refused_before_any_blob() {
    let test =
        "a_manifest_that_is_too_big_for_the_disk_old_or_mislabelled_is_refused_before_any_blob";
    let env = TestEnv::new();
    if !prepare(test, &env, false) {
        return;
    }
    // A layer declared a terabyte long: refused from the manifest, before a byte arrives.
    let mut image = fake_image();
    let manifest = String::from_utf8(image.manifest.clone())
        .unwrap()
        .replace(&format!("\"size\":{}", image.layer.len()), &format!("\"size\":{}", 1u64 << 40));
    image.manifest_digest = Digest::of(manifest.as_bytes()).to_string();
    image.manifest = manifest.into_bytes();
    let fake = FakeRegistry::start(move |request| image.answer(request));
    pull_fails(&env, &format!("{}/x/y:1", fake.addr()), &[], &["1.0 TiB by its manifest", "free"]);
    assert!(!fake.requests().iter().any(|request| request.path().contains("/blobs/")));

    // Docker's schema 1, and a manifest served under a type nobody asked for, or under one
    // its body contradicts.
    let schema1 = br#"{"schemaVersion":1,"name":"x/y","tag":"1","fsLayers":[]}"#.to_vec();
    let image = fake_image();
    let answers: [(Vec<u8>, &str, &str); 3] = [
        (schema1, "application/vnd.docker.distribution.manifest.v1+prettyjws", "schema 1"),
        (image.manifest.clone(), "application/vnd.evil+json", "no image manifest or index"),
        (
            image.manifest.clone(),
            "application/vnd.docker.distribution.manifest.v2+json",
            "the document says",
        ),
    ];
    for (body, content_type, said) in answers {
        let digest = Digest::of(&body).to_string();
        let fake = FakeRegistry::start(move |request| match request.path() {
            "/v2/" => Answer::json(200, serde_json::json!({})),
            path if path.contains("/manifests/") => Answer::status(200)
                .header("Content-Type", content_type)
                .header("Docker-Content-Digest", &digest)
                .body(body.clone()),
            _ => Answer::error(404, "BLOB_UNKNOWN", "no"),
        });
        pull_fails(&env, &format!("{}/x/y:1", fake.addr()), &[], &[said, "/v2/x/y/manifests/1"]);
    }
}
