//! Registries, from the outside: isolab's push and pull against a real registry (Debian's
//! `docker-registry`, started per test on 127.0.0.1 by [`Registry::start`]) and the real tools
//! of the OCI world around it (`curl` on the wire, `skopeo`, `umoci`), and `isolab compare
//! --image` running stage 5's column from a pulled image.
//!
//! The chapter "Sharing images" shows the transcripts of [`the_distribution_api_on_the_wire`]
//! and [`versions_travel_as_the_layers_the_other_side_lacks`]. Their images are made from a
//! few text files with `SOURCE_DATE_EPOCH` set, so every digest is the same on every machine
//! and the snapshots keep the real ones (the chapter compares them with git's commit hashes);
//! only the registry's port, dates and upload session ids are redacted.

use std::fs;
use std::process::{Command, Output, Stdio};

use isolab_tests::*;

const STAGE: &str = "stage5-images";

/// "Now" for every image the chapter's transcripts make: 2023-11-14 22:13:20 UTC.
const EPOCH: &str = "1700000000";

/// The chapter's inputs: a base of two text files, and a build context with a Dockerfile per
/// version of `app` (1.1 is 1.0 plus one `COPY`). Modes are set, not left to the umask, so the
/// layers come out the same everywhere.
const FILES: &str = r#"mkdir -p base/etc base/srv app
echo 'isolab teaching base' > base/etc/os-release
echo hello > base/srv/hello.txt
echo 'Hello from app 1.0' > app/greeting.txt
echo 'New in 1.1: a changelog' > app/news.txt
printf 'FROM base:1.0\nCOPY greeting.txt /srv/\nCMD ["/srv/greeting.txt"]\n' > app/Dockerfile.1.0
cp app/Dockerfile.1.0 app/Dockerfile.1.1 && echo 'COPY news.txt /srv/' >> app/Dockerfile.1.1
chmod -R u=rwX,go=rX base app
"#;

/// The OCI image manifest's media type, as an `Accept` or `Content-Type` value.
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A registry for `test`, or a skip (a failure under CI) when none can run here or a tool the
/// test needs is missing.
fn registry(test: &str, env: &TestEnv, tools: &[&str]) -> Option<Registry> {
    if !require_root(test) {
        return None;
    }
    if !Registry::available() {
        skip(test, "the whole test", "docker-registry is not installed (scripts/setup does it)");
        return None;
    }
    if let Some(tool) = tools.iter().find(|tool| !host_has(tool)) {
        skip(test, "the whole test", &format!("{tool} is not installed (scripts/setup does it)"));
        return None;
    }
    Some(Registry::start(env))
}

/// A shell line as a reader types it, run in the test's directory with the workspace's
/// binaries on `PATH`, `$REGISTRY` the test's registry (`127.0.0.1:PORT`), a fixed
/// `SOURCE_DATE_EPOCH`, and `extra` variables; its transcript (curl's `\r\n` as `\n`).
fn sh(env: &TestEnv, registry: &Registry, line: &str, extra: &[(&str, &str)]) -> (String, Output) {
    let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    let mut command = Command::new("sh");
    command
        .args(["-c", line])
        .current_dir(env.path())
        .stdin(Stdio::null())
        .env("PATH", path)
        .env("REGISTRY", registry.addr())
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .env("ISOLAB_USERNS_DIR", env.path().join("userns"));
    for (name, value) in extra {
        command.env(name, value);
    }
    let output = run(&mut command);
    (transcript(line, &output).replace('\r', ""), output)
}

/// [`sh`] without extra variables, which must succeed; its transcript.
fn ok(env: &TestEnv, registry: &Registry, line: &str) -> String {
    let (shown, output) = sh(env, registry, line, &[]);
    assert_eq!(code(&output), 0, "{shown}");
    shown
}

/// stage5-images with `--root <root>` and `args`, which must succeed; its stdout.
fn stage5(env: &TestEnv, root: &str, args: &[&str]) -> String {
    let output = run(env.cmd(STAGE).args(["--root", root]).args(args));
    assert_eq!(code(&output), 0, "{args:?}: {}{}", text(&output.stdout), text(&output.stderr));
    text(&output.stdout)
}

/// A program on the host, which must succeed; its stdout.
fn tool(env: &TestEnv, program: &str, args: &[&str]) -> String {
    let output = run(Command::new(program).args(args).current_dir(env.path()));
    assert_eq!(code(&output), 0, "{program} {args:?}: {}", text(&output.stderr));
    text(&output.stdout)
}

/// The lines of a push or pull whose first word is `word` (`sent`, `skipped`, `fetched`, …).
fn lines_of<'a>(stdout: &'a str, word: &str) -> Vec<&'a str> {
    stdout.lines().filter(|line| line.split_whitespace().next() == Some(word)).collect()
}

/// The digests a push or pull printed, one per blob line, in order (config first).
fn blob_digests(stdout: &str) -> Vec<String> {
    let words = ["sent", "skipped", "mounted", "fetched"];
    stdout
        .lines()
        .filter(|line| words.contains(&line.split_whitespace().next().unwrap_or_default()))
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(String::from)
        .collect()
}

/// The manifest digest the summary line (the last) names.
fn summary_digest(stdout: &str) -> String {
    let summary = stdout.lines().rfind(|line| line.starts_with("pu")).expect("a summary line");
    // `REF sha256:…:` or, pulled by digest, `REF@sha256:…:`.
    let digest =
        summary.split_whitespace().find_map(|word| word.find("sha256:").map(|at| &word[at..]));
    digest.expect("a digest in the summary").trim_end_matches(':').to_string()
}

/// A response header's value in a `curl -si` transcript.
fn header<'a>(transcript: &'a str, name: &str) -> Option<&'a str> {
    transcript.lines().find_map(|line| {
        let (key, value) = line.split_once(": ")?;
        key.eq_ignore_ascii_case(name).then_some(value.trim())
    })
}

/// `inspect --json` of `image` in the store `root`.
fn inspect(env: &TestEnv, root: &str, image: &str) -> serde_json::Value {
    let output = stage5(env, root, &["inspect", "--json", image]);
    serde_json::from_str(&output).unwrap_or_else(|error| panic!("{error}: {output}"))
}

/// The digests of an image's manifest: the config's, then each layer's, bottom first.
fn manifest_digests(value: &serde_json::Value) -> Vec<String> {
    let manifest = &value["manifest"];
    let layers = manifest["layers"].as_array().expect("layers").iter();
    std::iter::once(&manifest["config"])
        .chain(layers)
        .map(|blob| blob["digest"].as_str().expect("a digest").to_string())
        .collect()
}

/// The shared filters, and what varies on the wire: the registry's port (in a table, the
/// placeholder takes one space of the padding after it, so the columns stay where they
/// were), the `Date` header, and the ids of upload sessions. Digests, sizes and the images'
/// times are the same on every run and stay.
fn settings(env: &TestEnv) -> insta::Settings {
    let mut settings = snapshot_settings(Some(env));
    settings.add_filter(r"127\.0\.0\.1:\d{5}(\S*)  ", "127.0.0.1:[PORT]$1 ");
    settings.add_filter(r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]");
    settings.add_filter(r"(?m)^Date: .*$", "Date: [DATE]");
    settings.add_filter(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "[UUID]");
    settings.add_filter(r"_state=[A-Za-z0-9_%=-]+", "_state=[STATE]");
    settings
}

/// The blob `digest` on the registry's disk (distribution keeps each at
/// `blobs/sha256/<2 hex>/<hex>/data`, and never checks it again when serving it).
fn registry_blob(registry: &Registry, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256:");
    registry.storage.join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
}

#[test]
fn the_distribution_api_on_the_wire() {
    let env = TestEnv::new();
    let test = "the_distribution_api_on_the_wire";
    let Some(registry) = registry(test, &env, &["curl", "sha256sum", "python3"]) else { return };
    let snapshot = |name: &str, shown: &str| {
        settings(&env).bind(|| insta::assert_snapshot!(name.to_string(), shown));
    };

    // The inputs, and the images made of them: the same digests on every machine.
    settings(&env).bind(|| insta::assert_snapshot!("stage5_registry_files", FILES));
    ok(&env, &registry, FILES);
    let mut shown = ok(&env, &registry, "cat app/Dockerfile.1.1");
    shown += &ok(&env, &registry, "stage5-images --root store import base base:1.0");
    shown += &ok(
        &env,
        &registry,
        "stage5-images --root store build -t app:1.0 -f app/Dockerfile.1.0 app",
    );
    shown += &ok(
        &env,
        &registry,
        "stage5-images --root store build -t app:1.1 -f app/Dockerfile.1.1 app",
    );
    shown += &ok(&env, &registry, "stage5-images --root store images --digests");
    snapshot("stage5_registry_images", &shown);

    // GET /v2/: a registry, and the version of the API it speaks.
    let ping = ok(&env, &registry, "curl -si http://$REGISTRY/v2/");
    assert!(ping.contains("HTTP/1.1 200 OK"), "{ping}");
    assert_eq!(header(&ping, "Docker-Distribution-Api-Version"), Some("registry/2.0"));
    snapshot("stage5_registry_ping", &ping);

    // A push: every blob sent; again: every blob skipped, the same manifest.
    let first =
        ok(&env, &registry, "stage5-images --root store push base:1.0 $REGISTRY/team/base:1.0");
    let again =
        ok(&env, &registry, "stage5-images --root store push base:1.0 $REGISTRY/team/base:1.0");
    assert_eq!(lines_of(&first, "sent").len(), 2, "config and layer:\n{first}");
    assert_eq!(lines_of(&again, "skipped").len(), 2, "{again}");
    assert!(again.contains("0 blobs sent (0 B)"), "{again}");
    let base_manifest = summary_digest(&first);
    assert_eq!(summary_digest(&again), base_manifest);
    let base_blobs = blob_digests(&first);
    let (base_config, base_layer) = (&base_blobs[0], &base_blobs[1]);
    snapshot("stage5_registry_push", &format!("{first}{again}"));

    // Blobs: HEAD says whether the registry has one; an upload is a POST that opens a session
    // and a PUT of the bytes to its Location, with the digest they must hash to.
    let url = |path: &str| format!("http://$REGISTRY/v2/{path}");
    let mut shown =
        ok(&env, &registry, &format!("curl -sI {}", url(&format!("team/base/blobs/{base_layer}"))));
    assert!(shown.contains("HTTP/1.1 200 OK"), "{shown}");
    assert_eq!(header(&shown, "Docker-Content-Digest"), Some(base_layer.as_str()));
    ok(&env, &registry, "printf 'a note, uploaded by hand\\n' > note.txt");
    let summed = ok(&env, &registry, "sha256sum note.txt");
    let note_digest =
        format!("sha256:{}", summed.lines().nth(1).unwrap().split(' ').next().unwrap());
    shown += &summed;
    let absent = ok(
        &env,
        &registry,
        &format!("curl -sI {}", url(&format!("team/notes/blobs/{note_digest}"))),
    );
    assert!(absent.contains("HTTP/1.1 404 Not Found"), "{absent}");
    shown += &absent;
    let opened =
        ok(&env, &registry, &format!("curl -si -X POST {}", url("team/notes/blobs/uploads/")));
    assert!(opened.contains("HTTP/1.1 202 Accepted"), "{opened}");
    let location = header(&opened, "Location").expect("a Location").to_string();
    shown += &opened;
    let put_line = format!(
        "curl -si -X PUT -H 'Content-Type: application/octet-stream' --data-binary @note.txt \
         \"$LOCATION&digest={note_digest}\""
    );
    let (put, output) = sh(&env, &registry, &put_line, &[("LOCATION", &location)]);
    assert_eq!(code(&output), 0, "{put}");
    assert!(put.contains("HTTP/1.1 201 Created"), "{put}");
    assert_eq!(header(&put, "Docker-Content-Digest"), Some(note_digest.as_str()));
    shown += &put;
    let there = ok(
        &env,
        &registry,
        &format!("curl -sI {}", url(&format!("team/notes/blobs/{note_digest}"))),
    );
    assert!(there.contains("HTTP/1.1 200 OK"), "{there}");
    shown += &there;
    snapshot("stage5_registry_blobs", &shown);

    // A blob uploaded with a digest it does not hash to is refused.
    let opened =
        ok(&env, &registry, &format!("curl -si -X POST {}", url("team/notes/blobs/uploads/")));
    let location = header(&opened, "Location").expect("a Location").to_string();
    let (lying, _) = sh(
        &env,
        &registry,
        &put_line.replace("note.txt", "base/srv/hello.txt"),
        &[("LOCATION", &location)],
    );
    assert!(lying.contains("400 Bad Request") && lying.contains("DIGEST_INVALID"), "{lying}");
    snapshot("stage5_registry_digest_invalid", &lying);

    // A cross-repository mount: 201 and nothing travels; from a repository without the
    // blob, 202: an ordinary upload session instead.
    let mounted = ok(
        &env,
        &registry,
        &format!(
            "curl -si -X POST \"{}\"",
            url(&format!("team/other/blobs/uploads/?mount={note_digest}&from=team/notes"))
        ),
    );
    assert!(mounted.contains("HTTP/1.1 201 Created"), "{mounted}");
    let refused = ok(
        &env,
        &registry,
        &format!(
            "curl -si -X POST \"{}\"",
            url(&format!("team/other/blobs/uploads/?mount={note_digest}&from=team/nowhere"))
        ),
    );
    assert!(refused.contains("HTTP/1.1 202 Accepted"), "{refused}");
    snapshot("stage5_registry_mount", &format!("{mounted}{refused}"));

    // Manifests: asked for without an Accept that names the OCI type, the registry will not
    // serve one; with it, the bytes that hash to the digest the push printed.
    let manifest_url = url("team/base/manifests/1.0");
    let bare = ok(&env, &registry, &format!("curl -si {manifest_url}"));
    assert!(bare.contains("404 Not Found") && bare.contains("MANIFEST_UNKNOWN"), "{bare}");
    let mut shown = bare;
    let accept = format!("-H 'Accept: {OCI_MANIFEST}'");
    let head = ok(&env, &registry, &format!("curl -sI {accept} {manifest_url}"));
    assert_eq!(header(&head, "Content-Type"), Some(OCI_MANIFEST), "{head}");
    assert_eq!(header(&head, "Docker-Content-Digest"), Some(base_manifest.as_str()), "{head}");
    shown += &head;
    let body =
        ok(&env, &registry, &format!("curl -s {accept} {manifest_url} | python3 -m json.tool"));
    assert!(body.contains(base_config.as_str()) && body.contains(base_layer.as_str()), "{body}");
    shown += &body;
    let hashed = ok(&env, &registry, &format!("curl -s {accept} {manifest_url} | sha256sum"));
    assert!(hashed.contains(base_manifest.strip_prefix("sha256:").unwrap()), "{hashed}");
    shown += &hashed;
    let config = ok(
        &env,
        &registry,
        &format!(
            "curl -s {} | python3 -m json.tool",
            url(&format!("team/base/blobs/{base_config}"))
        ),
    );
    assert!(config.contains("diff_ids") && config.contains("2023-11-14T22:13:20"), "{config}");
    shown += &config;
    snapshot("stage5_registry_manifests", &shown);

    // A tag is a PUT of a manifest under a name: the same bytes, the same digest.
    let mut shown =
        ok(&env, &registry, &format!("curl -s {accept} -o manifest.json {manifest_url}"));
    let tagged = ok(
        &env,
        &registry,
        &format!(
            "curl -si -X PUT -H 'Content-Type: {OCI_MANIFEST}' --data-binary @manifest.json {}",
            url("team/base/manifests/stable")
        ),
    );
    assert!(tagged.contains("HTTP/1.1 201 Created"), "{tagged}");
    assert_eq!(header(&tagged, "Docker-Content-Digest"), Some(base_manifest.as_str()));
    shown += &tagged;
    let tags = ok(&env, &registry, &format!("curl -s {}", url("team/base/tags/list")));
    assert!(tags.contains(r#""tags":["1.0","stable"]"#), "{tags}");
    shown += &tags;
    snapshot("stage5_registry_tags", &shown);

    // What a pull checks: one byte of the base's layer flipped on the registry's disk.
    let data = registry_blob(&registry, base_layer);
    let mut bytes = fs::read(&data).unwrap_or_else(|error| panic!("{}: {error}", data.display()));
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&data, &bytes).unwrap();
    let (pulled, output) =
        sh(&env, &registry, "stage5-images --root fresh pull $REGISTRY/team/base:1.0", &[]);
    assert_eq!(code(&output), 125, "{pulled}");
    assert!(pulled.contains(base_layer.as_str()) && pulled.contains("does not match"), "{pulled}");
    let images = ok(&env, &registry, "stage5-images --root fresh images");
    assert_eq!(images.lines().count(), 2, "the command and the header only: {images}");
    let blobs = env.path().join("fresh/blobs/sha256");
    assert!(!blobs.join(base_layer.strip_prefix("sha256:").unwrap()).exists());
    snapshot("stage5_registry_tampered", &format!("{pulled}{images}"));
}

#[test]
fn versions_travel_as_the_layers_the_other_side_lacks() {
    let env = TestEnv::new();
    let test = "versions_travel_as_the_layers_the_other_side_lacks";
    let Some(registry) = registry(test, &env, &[]) else { return };
    let snapshot = |name: &str, shown: &str| {
        settings(&env).bind(|| insta::assert_snapshot!(name.to_string(), shown));
    };
    ok(&env, &registry, FILES);
    for line in [
        "stage5-images --root store import base base:1.0",
        "stage5-images --root store build -t app:1.0 -f app/Dockerfile.1.0 app",
        "stage5-images --root store build -t app:1.1 -f app/Dockerfile.1.1 app",
        "stage5-images --root store push base:1.0 $REGISTRY/team/base:1.0",
    ] {
        ok(&env, &registry, line);
    }
    let app10 = inspect(&env, "store", "app:1.0");
    let app11 = inspect(&env, "store", "app:1.1");
    let (blobs10, blobs11) = (manifest_digests(&app10), manifest_digests(&app11));
    assert_eq!(blobs10[1..], blobs11[1..3], "1.1 is 1.0's layers and one more");
    assert_eq!(blobs11.len(), 4, "{blobs11:?}");

    // Pushed: 1.0 takes the base's layer from team/base (a mount), 1.1 sends only its own.
    let push10 = ok(
        &env,
        &registry,
        "stage5-images --root store push --mount-from team/base app:1.0 $REGISTRY/team/app:1.0",
    );
    let push11 =
        ok(&env, &registry, "stage5-images --root store push app:1.1 $REGISTRY/team/app:1.1");
    assert_eq!(lines_of(&push10, "mounted").len(), 1, "{push10}");
    assert!(lines_of(&push10, "mounted")[0].contains(&blobs10[1]), "{push10}");
    let sent11: Vec<&str> = lines_of(&push11, "sent");
    assert_eq!(sent11.len(), 2, "1.1's config and its new layer:\n{push11}");
    assert!(sent11[0].contains(&blobs11[0]) && sent11[1].contains(&blobs11[3]), "{push11}");
    assert_eq!(lines_of(&push11, "skipped").len(), 2, "{push11}");
    assert_eq!(summary_digest(&push10), app10["digest"].as_str().unwrap());
    assert_eq!(summary_digest(&push11), app11["digest"].as_str().unwrap());
    snapshot("stage5_registry_versions_push", &format!("{push10}{push11}"));

    // Pulled into a fresh store: the second pull fetches 1.1's config and layer only.
    let pull10 = ok(&env, &registry, "stage5-images --root laptop pull $REGISTRY/team/app:1.0");
    let pull11 = ok(&env, &registry, "stage5-images --root laptop pull $REGISTRY/team/app:1.1");
    assert_eq!(lines_of(&pull10, "fetched").len(), 3, "{pull10}");
    let fetched: Vec<String> =
        lines_of(&pull11, "fetched").iter().map(|line| blob_digests(line).remove(0)).collect();
    assert_eq!(fetched, [blobs11[0].clone(), blobs11[3].clone()], "{pull11}");
    assert!(pull11.contains("2 blobs fetched") && pull11.contains("2 already here"), "{pull11}");
    assert_eq!(summary_digest(&pull10), summary_digest(&push10));
    assert_eq!(summary_digest(&pull11), summary_digest(&push11));
    // Stored once: four distinct blobs of layers and configs, and the shared ones once.
    let df = ok(&env, &registry, "stage5-images --root laptop df");
    assert!(df.contains("2 images: 3 distinct layers"), "{df}");
    let digests = ok(&env, &registry, "stage5-images --root laptop images --digests");
    for image in [&app10, &app11] {
        assert!(digests.contains(image["digest"].as_str().unwrap()), "{digests}");
    }
    let history = ok(&env, &registry, "stage5-images --root laptop history $REGISTRY/team/app:1.1");
    for layer in &blobs11[1..] {
        assert!(history.contains(&layer[..19]), "{layer} in\n{history}");
    }
    assert_eq!(
        inspect(&env, "laptop", &format!("{}/team/app:1.1", registry.addr()))["manifest"],
        app11["manifest"]
    );
    snapshot("stage5_registry_versions_pull", &format!("{pull10}{pull11}{df}{digests}{history}"));

    // A tag moves like a branch: `latest` is 1.0, then 1.1; a pull follows it, and fetches
    // nothing it has.
    let mut shown =
        ok(&env, &registry, "stage5-images --root store push app:1.0 $REGISTRY/team/app:latest");
    let before = ok(&env, &registry, "stage5-images --root laptop pull $REGISTRY/team/app:latest");
    assert_eq!(summary_digest(&before), summary_digest(&push10));
    shown += &before;
    shown +=
        &ok(&env, &registry, "stage5-images --root store push app:1.1 $REGISTRY/team/app:latest");
    let after = ok(&env, &registry, "stage5-images --root laptop pull $REGISTRY/team/app:latest");
    assert_eq!(summary_digest(&after), summary_digest(&push11), "latest moved to 1.1");
    assert!(after.contains("0 blobs fetched (0 B), 4 already here"), "{after}");
    shown += &after;
    let moved = ok(&env, &registry, "stage5-images --root laptop images --digests");
    let latest = moved.lines().find(|line| line.contains(" latest ")).expect("a latest row");
    assert!(latest.contains(&summary_digest(&push11)), "{moved}");
    shown += &moved;
    snapshot("stage5_registry_moved_tag", &shown);

    // A digest pins: pulled by 1.0's digest, after the tag moved, it is 1.0 exactly.
    let pinned =
        format!("stage5-images --root pinned pull $REGISTRY/team/app@{}", summary_digest(&push10));
    let mut shown = ok(&env, &registry, &pinned);
    assert_eq!(summary_digest(&shown), summary_digest(&push10));
    let by_digest = inspect(&env, "pinned", &summary_digest(&push10));
    assert_eq!(by_digest["manifest"], app10["manifest"]);
    let listed = ok(&env, &registry, "stage5-images --root pinned images --digests");
    assert!(listed.contains("<none>"), "kept untagged, no `latest` made: {listed}");
    assert!(!listed.contains("latest"), "{listed}");
    shown += &listed;
    snapshot("stage5_registry_pinned", &shown);
    // Removed by its digest, blobs and all.
    let digest = summary_digest(&push10);
    let removed = stage5(&env, "pinned", &["rmi", &digest]);
    assert!(removed.contains(&format!("untagged {digest}")), "{removed}");
    let left = fs::read_dir(env.path().join("pinned/blobs/sha256")).unwrap().count();
    assert_eq!(left, 0, "rmi of the untagged image took its blobs");
}

#[test]
fn skopeo_copies_what_isolab_pushed_and_the_copy_runs() {
    let env = TestEnv::new();
    let test = "skopeo_copies_what_isolab_pushed_and_the_copy_runs";
    let Some(registry) = registry(test, &env, &["skopeo", "umoci"]) else { return };
    env.namespaced_rootfs("rootfs");
    fs::write(env.path().join("rootfs/etc/motd"), "pushed by isolab\n").unwrap();
    stage5(&env, "store", &["import", "rootfs", "bb:1"]);
    let target = format!("{}/team/bb:1", registry.addr());
    let pushed = stage5(&env, "store", &["push", "bb:1", &target]);
    let printed = blob_digests(&pushed);

    // skopeo copies it out of the registry into an OCI layout of its own.
    let source = format!("docker://{target}");
    tool(
        &env,
        "skopeo",
        &["--insecure-policy", "copy", "-q", "--src-tls-verify=false", &source, "oci:copied:bb"],
    );
    // skopeo inspect sees the manifest and the layers isolab printed.
    let inspected = tool(&env, "skopeo", &["inspect", "--tls-verify=false", &source]);
    let value: serde_json::Value = serde_json::from_str(&inspected).expect("JSON");
    assert_eq!(value["Digest"], summary_digest(&pushed), "{inspected}");
    let layers: Vec<&str> =
        value["Layers"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(layers, printed[1..], "{inspected}\n{pushed}");
    let config =
        tool(&env, "skopeo", &["inspect", "--config", "--raw", "--tls-verify=false", &source]);
    assert_eq!(
        format!("sha256:{}", sha256_hex(config.as_bytes())),
        printed[0],
        "the config's bytes"
    );

    // umoci unpacks the copy: the file isolab's image holds is there.
    tool(&env, "umoci", &["unpack", "--image", "copied:bb", "bundle"]);
    let motd = fs::read_to_string(env.path().join("bundle/rootfs/etc/motd")).unwrap();
    assert_eq!(motd, "pushed by isolab\n");

    // And the copy runs: the layout skopeo wrote, tarred, loaded into a fresh store.
    tool(&env, "tar", &["-C", "copied", "-cf", "copied.tar", "."]);
    stage5(&env, "again", &["load", "-i", "copied.tar"]);
    let digest = summary_digest(&pushed);
    let loaded = inspect(&env, "again", &digest);
    assert_eq!(loaded["digest"], digest.as_str(), "skopeo kept the manifest's bytes");
    let images = stage5(&env, "again", &["images", "--digests"]);
    assert!(images.contains(&digest), "the loaded image is tagged: {images}");
    let ran = stage5(&env, "again", &["run", "--rm", &digest, "--", "cat", "/etc/motd"]);
    assert_eq!(ran, "pushed by isolab\n");
}

#[test]
fn an_image_umoci_made_and_skopeo_pushed_is_pulled_and_runs() {
    let env = TestEnv::new();
    let test = "an_image_umoci_made_and_skopeo_pushed_is_pulled_and_runs";
    let Some(registry) = registry(test, &env, &["skopeo", "umoci"]) else { return };
    env.namespaced_rootfs("rootfs");

    // umoci: an OCI layout, a new image, a layer from a directory (the busybox rootfs and a
    // file of its own), a command.
    tool(&env, "umoci", &["init", "--layout", "made"]);
    tool(&env, "umoci", &["new", "--image", "made:v1"]);
    tool(&env, "umoci", &["unpack", "--image", "made:v1", "work"]);
    tool(&env, "cp", &["-a", "rootfs/.", "work/rootfs/"]);
    fs::write(env.path().join("work/rootfs/etc/motd"), "made by umoci\n").unwrap();
    tool(&env, "umoci", &["repack", "--image", "made:v1", "work"]);
    tool(
        &env,
        "umoci",
        &["config", "--image", "made:v1", "--config.cmd", "/bin/cat", "--config.cmd", "/etc/motd"],
    );

    // skopeo pushes it to the registry; what it reports is what isolab must pull.
    let target = format!("{}/umoci/made:v1", registry.addr());
    let destination = format!("docker://{target}");
    tool(
        &env,
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "-q",
            "--dest-tls-verify=false",
            "oci:made:v1",
            &destination,
        ],
    );
    let inspected = tool(&env, "skopeo", &["inspect", "--tls-verify=false", &destination]);
    let value: serde_json::Value = serde_json::from_str(&inspected).expect("JSON");
    let reported: Vec<String> = value["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| layer.as_str().unwrap().to_string())
        .collect();

    let pulled = stage5(&env, "store", &["pull", &target]);
    assert_eq!(summary_digest(&pulled), value["Digest"].as_str().unwrap(), "{pulled}");
    let inspect = inspect(&env, "store", &target);
    assert_eq!(inspect["digest"], value["Digest"], "{inspect}");
    assert_eq!(manifest_digests(&inspect)[1..], reported, "the layers skopeo reported");
    let ran = stage5(&env, "store", &["run", "--rm", &target]);
    assert_eq!(ran, "made by umoci\n", "the config umoci wrote says what runs");
}

/// The SHA-256 of `bytes`, in hex.
fn sha256_hex(bytes: &[u8]) -> String {
    libisolab::digest::Digest::of(bytes).hex().to_string()
}

#[test]
fn compare_runs_stage5_from_a_pulled_image() {
    let env = TestEnv::new();
    let test = "compare_runs_stage5_from_a_pulled_image";
    let Some(registry) = registry(test, &env, &[]) else { return };
    let _lock = host_lock();
    // The rootfs rootfs-builder makes carries the probe; pushed as an image, it is one
    // compare can run.
    env.namespaced_rootfs("rootfs");
    stage5(&env, "store", &["import", "rootfs", "probe:1"]);
    let reference = format!("{}/course/probe:1", registry.addr());
    stage5(&env, "store", &["push", "probe:1", &reference]);

    let output = run(env
        .cmd("isolab")
        .args(["compare", "--json", "--image", &reference, "--creds", "ann:s3cret"])
        .env("TMPDIR", env.path()));
    let stdout = text(&output.stdout);
    assert_eq!(code(&output), 0, "{}{stdout}", text(&output.stderr));
    assert!(!stdout.contains("s3cret"), "the password is never shown");
    let comparison: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let columns = comparison["columns"].as_array().unwrap();
    let stage5 = columns.iter().find(|column| column["id"] == "stage5").expect("a stage5 column");
    assert!(stage5["error"].is_null(), "{stage5}");
    let command: Vec<&str> =
        stage5["command"].as_array().unwrap().iter().map(|arg| arg.as_str().unwrap()).collect();
    let probe = command.iter().position(|arg| *arg == "/isolab/probe").expect("the probe");
    assert_eq!(command[probe - 2..=probe], [reference.as_str(), "--", "/isolab/probe"]);
    // The probe ran in the pulled image, isolated as the imported one is.
    let cell = |check: &str| {
        let cells = stage5["cells"].as_array().unwrap();
        let index =
            comparison["checks"].as_array().unwrap().iter().position(|c| c["name"] == check);
        cells[index.expect(check)]["status"].as_str().unwrap().to_string()
    };
    for check in ["host-filesystem", "host-processes", "hostname", "network", "rootfs-write"] {
        assert_eq!(cell(check), "isolated", "{check}: {stage5}");
    }
    // The run's working directory, its store with the pulled image, is gone.
    let left: Vec<String> = fs::read_dir(env.path())
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("isolab-"))
        .collect();
    assert!(left.is_empty(), "compare left {left:?}");
    assert!(mounts_under(env.path()).is_empty(), "{:?}", mounts_under(env.path()));

    // A reference nothing answers for: the column fails, saying why, and compare says so.
    let missing = format!("{}/course/nothing:1", registry.addr());
    let output = run(env
        .cmd("isolab")
        .args(["compare", "--json", "--image", &missing])
        .env("TMPDIR", env.path()));
    assert_eq!(code(&output), 1, "a column did not report: {}", text(&output.stderr));
    let comparison: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let columns = comparison["columns"].as_array().unwrap();
    let stage5 = columns.iter().find(|column| column["id"] == "stage5").expect("a stage5 column");
    let error = stage5["error"].as_str().expect("an error");
    assert!(error.contains("before the probe") && error.contains("404"), "{error}");
}
