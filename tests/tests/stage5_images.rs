//! Stage 5 end to end: the real `stage5-images` binary, images imported from a busybox rootfs
//! built by the real `rootfs-builder` (and from a Debian made by debootstrap), a store in the
//! test's own directory. Each test looks at what a user would check by eye: what containers
//! see, what the commands print, and the disk (the unpacked layers never written, each layer
//! stored once, the tar of a layer as docker would write it); and leaves nothing behind.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use isolab_tests::*;

const STAGE: &str = "stage5-images";

/// What the tests add to the busybox rootfs: root-owned files and a directory to change,
/// delete and replace.
const BASE_FILES: &str = "\
mkdir -p rootfs/srv/data rootfs/etc/conf.d
echo welcome > rootfs/etc/motd
echo base > rootfs/etc/hostname
echo old > rootfs/srv/data/old
echo a=1 > rootfs/etc/conf.d/a.conf
echo b=2 > rootfs/etc/conf.d/b.conf
";

/// The base rootfs at `<env>/rootfs`: busybox plus [`BASE_FILES`], the test directory opened
/// to root of a user namespace.
fn base(env: &TestEnv) -> PathBuf {
    let rootfs = env.namespaced_rootfs("rootfs");
    let output = run(Command::new("sh").args(["-ec", BASE_FILES]).current_dir(env.path()));
    assert!(output.status.success(), "{}", text(&output.stderr));
    rootfs
}

/// Runs stage5-images with the store `store` (unless `args` name a `--root`) and `args`.
fn stage5(env: &TestEnv, args: &[&str]) -> (String, Output) {
    let mut all = vec!["--root", "store"];
    if args.contains(&"--root") {
        all.clear();
    }
    all.extend_from_slice(args);
    transcript_of(env, STAGE, &all)
}

/// [`stage5`], which must succeed; its transcript.
fn ok(env: &TestEnv, args: &[&str]) -> String {
    let (shown, output) = stage5(env, args);
    assert_eq!(code(&output), 0, "{shown}");
    shown
}

/// [`stage5`], which must succeed; its stdout.
fn stdout_of(env: &TestEnv, args: &[&str]) -> String {
    let (shown, output) = stage5(env, args);
    assert_eq!(code(&output), 0, "{shown}");
    text(&output.stdout)
}

/// A shell command line run in the test's directory, and its transcript (`$ line`).
fn shell(env: &TestEnv, line: &str) -> (String, Output) {
    let output = run(Command::new("sh").args(["-c", line]).current_dir(env.path()));
    (transcript(line, &output), output)
}

/// [`shell`], which must succeed; its transcript.
fn shell_ok(env: &TestEnv, line: &str) -> String {
    let (shown, output) = shell(env, line);
    assert_eq!(code(&output), 0, "{shown}");
    shown
}

/// `inspect --json IMAGE` of the store `root`.
fn inspect_in(env: &TestEnv, root: &str, image: &str) -> serde_json::Value {
    let output = stdout_of(env, &["--root", root, "inspect", "--json", image]);
    serde_json::from_str(&output).unwrap_or_else(|error| panic!("{error}: {output}"))
}

/// `inspect --json IMAGE` of the test's store.
fn inspect(env: &TestEnv, image: &str) -> serde_json::Value {
    inspect_in(env, "store", image)
}

/// The digests of an image's layer blobs, bottom first.
fn layer_digests(env: &TestEnv, image: &str) -> Vec<String> {
    let value = inspect(env, image);
    let layers = value["manifest"]["layers"].as_array().expect("layers").clone();
    layers.iter().map(|layer| layer["digest"].as_str().unwrap().to_string()).collect()
}

/// The diff_ids of an image's layers (the names of their unpacked directories), bottom first.
fn diff_ids(env: &TestEnv, image: &str) -> Vec<String> {
    let value = inspect(env, image);
    let ids = value["config"]["rootfs"]["diff_ids"].as_array().expect("diff_ids").clone();
    ids.iter().map(|id| id.as_str().unwrap().to_string()).collect()
}

/// `store/blobs/sha256/<hex>`, relative to the test's directory, for `sha256:<hex>`.
fn blob(digest: &str) -> String {
    format!("store/blobs/sha256/{}", digest.strip_prefix("sha256:").unwrap())
}

/// The names in a directory, sorted (none if it does not exist).
fn names_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> =
        entries.map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// The containers of the store (their directories' names).
fn containers(env: &TestEnv) -> Vec<String> {
    names_in(&env.path().join("store/containers"))
}

/// The paths whose descriptions differ between `before` and `after`.
fn changed(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>) -> Vec<PathBuf> {
    let keys: BTreeSet<&PathBuf> = before.keys().chain(after.keys()).collect();
    keys.into_iter().filter(|key| before.get(*key) != after.get(*key)).cloned().collect()
}

/// The shared filters, plus what varies in stage 5's output: digests (a layer's depends on the
/// host's busybox), ids, names of build containers, times, sizes, pids, hostnames.
fn settings(env: &TestEnv) -> insta::Settings {
    let mut settings = snapshot_settings(Some(env));
    let bin = bin_dir().display().to_string();
    settings.add_filter(&format!("{}/", regex_escape(&bin)), "");
    settings.add_filter(r"sha256:[0-9a-f]{64}", "sha256:[DIGEST]");
    settings.add_filter(r"sha256_[0-9a-f]{64}", "sha256_[DIGEST]");
    settings.add_filter(r"\b[0-9a-f]{64}\b", "[DIGEST]");
    // `history` shows 19 characters of a layer's digest: the placeholder keeps the width.
    settings.add_filter(r"sha256:[0-9a-f]{12}\b", "sha256:[SHORT     ]");
    settings.add_filter(r"\b[0-9a-f]{12}\b", "[ID        ]");
    settings.add_filter(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\b", "[DATE AND TIME UTC]");
    settings.add_filter(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "[TIME]");
    settings.add_filter(r"runtime pid \d+", "runtime pid [PID]");
    settings.add_filter(r"\(pid \d+\)", "(pid [PID])");
    settings.add_filter(r"isolab-[0-9a-f]{6}\b", "isolab-[HOSTNAME]");
    // Sizes depend on the host's busybox and libraries. In a table, a size and its padding
    // become one placeholder, so the columns after it stay where they were.
    settings.add_filter(r"\b\d+(\.\d+)? (B|KiB|MiB|GiB) {2,}", "[SIZE]  ");
    settings.add_filter(r"\b\d+(\.\d+)? (B|KiB|MiB|GiB)\b", "[SIZE]");
    settings.add_filter(r"SIZE +CREATED BY", "SIZE    CREATED BY");
    settings.add_filter(r"its \d+ bytes", "its [N] bytes");
    settings.add_filter(r#""size": \d+"#, r#""size": [N]"#);
    // Tests run in parallel and cgroups are host-wide: a `run` or `gc` here may collect the
    // cgroup of another test's killed runtime, and say so; never about this test.
    settings.add_filter(r"(?m)^stage5-images: gc: removed cgroup .*\n", "");
    settings.add_filter(r"(?m)^removed cgroup .*\n", "");
    settings
}

/// Checks a command failed as a runtime error: exit 125, one line on stderr, no stdout.
fn check_one_line_125(shown: &str, output: &Output) {
    assert_eq!(code(output), 125, "{shown}");
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("stage5-images: error: "), "{stderr}");
    assert!(output.stdout.is_empty(), "{shown}");
}

/// Nothing of the test is left mounted, and no container process runs.
fn nothing_left_running(env: &TestEnv) {
    assert!(mounts_under(env.path()).is_empty(), "{:?}", mounts_under(env.path()));
    let rooted = processes_rooted_in(env.path());
    assert!(rooted.is_empty(), "processes left in the store: {rooted:?}");
}

/// The lines of a `tar -tvz --numeric-owner` listing whose owner is not `0/0`.
fn not_root_owned(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter(|line| !line.starts_with('$'))
        .filter(|line| line.split_whitespace().nth(1) != Some("0/0"))
        .map(String::from)
        .collect()
}

#[test]
fn import_makes_an_image_of_a_rootfs() {
    if !require_root("import_makes_an_image_of_a_rootfs") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    // The chapter shows these lines: the reader prepares the base as the tests do.
    settings(&env).bind(|| insta::assert_snapshot!("stage5_base_files", BASE_FILES));
    let import = ok(&env, &["import", "rootfs", "base:1.0"]);
    assert!(import.contains("base:1.0 ") && import.contains(": 1 layer, "), "{import}");
    let images = ok(&env, &["images"]);
    let rows: Vec<&str> = images.lines().skip(2).collect();
    assert_eq!(rows.len(), 1, "{images}");
    assert!(rows[0].starts_with("base  ") && rows[0].contains("  1.0  "), "{images}");
    // The id `images` shows is the one `import` said.
    let id = inspect(&env, "base:1.0")["id"].as_str().unwrap().to_string();
    assert!(import.contains(&id) && images.contains(&id), "{import}{images}");
    let shown = format!("{import}{images}");
    settings(&env).bind(|| insta::assert_snapshot!("stage5_import", shown));
}

// Issue 10 §0 under stage 5: the default container (a user namespace) of an imported image
// changes, deletes and replaces root-owned files and directories; the shared layers stay as
// they were, and the commit records the changes as root's, with whiteouts.
#[test]
fn root_of_a_user_namespace_changes_an_images_files_and_its_layers_stay_as_they_were() {
    if !require_root(
        "root_of_a_user_namespace_changes_an_images_files_and_its_layers_stay_as_they_were",
    ) {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    ok(&env, &["import", "rootfs", "base:1.0"]);
    // A first run unpacks the layer; the listing is taken after it.
    ok(&env, &["run", "--rm", "base:1.0", "--", "/bin/true"]);
    let layers = env.path().join("store/layers");
    let before = describe_tree(&layers);
    let script = "echo x > /etc/motd; rm /bin/ls; rm -r /etc/conf.d; mkdir /etc/conf.d; \
                  echo c=3 > /etc/conf.d/c.conf; chmod 700 /root; chmod 600 /etc/hostname; \
                  stat -c '%u:%g %a %n' /etc/conf.d /root /etc/hostname /etc/motd";
    let (ran, output) =
        stage5(&env, &["run", "--name", "web", "base:1.0", "--", "/bin/sh", "-c", script]);
    assert_eq!(code(&output), 0, "{ran}");
    assert_eq!(
        text(&output.stdout),
        "0:0 755 /etc/conf.d\n0:0 700 /root\n0:0 600 /etc/hostname\n0:0 644 /etc/motd\n",
        "{ran}"
    );
    let after = describe_tree(&layers);
    assert_eq!(changed(&before, &after), Vec::<PathBuf>::new(), "the layers changed");

    let (diff, output) = stage5(&env, &["diff", "web"]);
    assert_eq!(code(&output), 0, "{diff}");
    let expected = "C /bin\nD /bin/ls\nC /etc\nC /etc/conf.d\nD /etc/conf.d/a.conf\n\
                    D /etc/conf.d/b.conf\nA /etc/conf.d/c.conf\nC /etc/hostname\nC /etc/motd\n\
                    C /root\n";
    assert_eq!(text(&output.stdout), expected, "{diff}");
    settings(&env).bind(|| insta::assert_snapshot!("stage5_run_changes", format!("{ran}{diff}")));

    // The commit: a new image, its top layer the container's upper.
    let commit = ok(&env, &["commit", "web", "base:1.1"]);
    let history = ok(&env, &["history", "base:1.1"]);
    let images = ok(&env, &["images"]);
    assert_eq!(history.lines().count(), 4, "header, the commit, the import: {history}");
    assert!(
        history.lines().nth(2).unwrap().contains("/bin/sh -c 'echo x > /etc/motd"),
        "{history}"
    );
    assert!(history.lines().nth(3).unwrap().ends_with("import rootfs"), "{history}");
    let tags: Vec<Vec<&str>> =
        images.lines().skip(2).map(|row| row.split_whitespace().take(2).collect()).collect();
    assert_eq!(tags, [["base", "1.0"], ["base", "1.1"]], "{images}");
    let shown = format!("{commit}{history}{images}");
    settings(&env).bind(|| insta::assert_snapshot!("stage5_commit_history", shown));

    // The layer's tar: whiteouts for what was deleted, an opaque marker for the replaced
    // directory, and every entry root's inside (0/0), not the host ids of the namespace.
    let top = layer_digests(&env, "base:1.1").last().unwrap().clone();
    let (upper, output) = stage5(&env, &["diff", "--upper", "web"]);
    assert_eq!(code(&output), 0, "{upper}");
    assert!(upper.contains("whiteout /bin/ls"), "{upper}");
    assert!(upper.contains("opaque   /etc/conf.d"), "{upper}");
    let listing = shell_ok(&env, &format!("tar --numeric-owner -tvzf {}", blob(&top)));
    for entry in ["bin/.wh.ls", "etc/conf.d/.wh..wh..opq", "etc/conf.d/c.conf", "etc/motd"] {
        assert!(listing.lines().any(|line| line.ends_with(&format!(" {entry}"))), "{listing}");
    }
    assert_eq!(not_root_owned(&listing), Vec::<String>::new(), "{listing}");
    settings(&env)
        .bind(|| insta::assert_snapshot!("stage5_whiteouts", format!("{upper}{listing}")));

    // A container of the new image sees the changes.
    let check = "cat /etc/motd; test -e /bin/ls || echo no ls; echo /etc/conf.d/*; \
                 stat -c '%a %n' /root /etc/hostname";
    let output = stdout_of(&env, &["run", "--rm", "base:1.1", "--", "/bin/sh", "-c", check]);
    assert_eq!(output, "x\nno ls\n/etc/conf.d/c.conf\n700 /root\n600 /etc/hostname\n");
    // And one of the old image does not.
    let output = stdout_of(&env, &["run", "--rm", "base:1.0", "--", "/bin/sh", "-c", check]);
    let root_mode = fs::metadata(env.path().join("rootfs/root")).unwrap().mode() & 0o7777;
    let expected = format!(
        "welcome\n/etc/conf.d/a.conf /etc/conf.d/b.conf\n{root_mode:o} /root\n644 /etc/hostname\n"
    );
    assert_eq!(output, expected);
    // Still no layer changed (new ones were added by the commit).
    let now = describe_tree(&layers);
    let changed_old: Vec<PathBuf> = changed(&before, &now)
        .into_iter()
        .filter(|path| before.contains_key(path) && !path.as_os_str().is_empty())
        .collect();
    assert_eq!(changed_old, Vec::<PathBuf>::new(), "the layers changed");
    nothing_left_running(&env);
}

/// The Dockerfile of the build tests: RUN changes root-owned files in the default user
/// namespace, COPY adds a file of the context, the rest is config.
const DOCKERFILE: &str = "\
FROM base:1.0
ARG GREETING=hello
RUN echo 'alice:x:1000:1000::/home/alice:/bin/sh' >> /etc/passwd && echo 'alice:x:1000:' >> /etc/group && mkdir -p /home/alice && chown alice:alice /home/alice && echo edited > /etc/motd && rm -r /etc/conf.d /bin/vi && echo $GREETING > /greeting
COPY hello.txt /app/hello.txt
ENV APP_MODE=prod
WORKDIR /app
USER alice
LABEL org.example.course=isolab
ENTRYPOINT [\"/bin/sh\", \"-c\"]
CMD [\"id; pwd; echo $APP_MODE; cat hello.txt\"]
";

/// The context `app/` (Dockerfile and hello.txt) beside an imported base:1.0.
fn build_context(env: &TestEnv) {
    base(env);
    ok(env, &["import", "rootfs", "base:1.0"]);
    fs::create_dir(env.path().join("app")).unwrap();
    fs::write(env.path().join("app/Dockerfile"), DOCKERFILE).unwrap();
    fs::write(env.path().join("app/hello.txt"), "hello from the context\n").unwrap();
}

/// The steps of a build's output that came from the cache, and those that ran.
fn cached_steps(build: &str) -> (Vec<usize>, Vec<usize>) {
    let mut cached = Vec::new();
    let mut ran = Vec::new();
    let mut step = 0;
    for line in build.lines() {
        if let Some(rest) = line.strip_prefix("step ") {
            step = rest.split('/').next().unwrap().parse().unwrap();
        } else if line.starts_with("  -> ") && step > 1 {
            if line.ends_with("(cached)") {
                cached.push(step);
            } else {
                ran.push(step);
            }
        }
    }
    (cached, ran)
}

/// The manifest digest a build said it built.
fn built_digest(build: &str) -> String {
    let line = build.lines().find(|line| line.starts_with("built ")).expect(build);
    let start = line.find("(sha256:").expect(line) + 1;
    line[start..line.len() - 1].to_string()
}

#[test]
fn build_runs_a_dockerfile_and_an_unchanged_rebuild_is_all_cached() {
    if !require_root("build_runs_a_dockerfile_and_an_unchanged_rebuild_is_all_cached") {
        return;
    }
    let env = TestEnv::new();
    build_context(&env);
    let cat = shell_ok(&env, "cat app/Dockerfile");
    let started = Instant::now();
    let build = ok(&env, &["build", "-t", "app:1.0", "app"]);
    eprintln!("build: {:?}", started.elapsed());
    assert!(build.contains("step 10/10: CMD"), "{build}");
    let (cached, ran) = cached_steps(&build);
    assert!(cached.is_empty(), "{build}");
    assert_eq!(ran, vec![3, 4, 5, 6, 7, 8, 9, 10], "{build}");
    settings(&env).bind(|| insta::assert_snapshot!("stage5_build", format!("{cat}{build}")));

    let rebuild = ok(&env, &["build", "-t", "app:1.0", "app"]);
    let (cached, ran) = cached_steps(&rebuild);
    assert_eq!(cached, vec![3, 4, 5, 6, 7, 8, 9, 10], "{rebuild}");
    assert!(ran.is_empty(), "{rebuild}");
    assert_eq!(built_digest(&build), built_digest(&rebuild), "{build}{rebuild}");
    settings(&env).bind(|| insta::assert_snapshot!("stage5_rebuild_cached", rebuild));

    // The image runs as USER, in WORKDIR, with ENV, ENTRYPOINT and CMD.
    let output = stdout_of(&env, &["run", "--rm", "app:1.0"]);
    assert_eq!(
        output,
        "uid=1000(alice) gid=1000(alice) groups=1000(alice)\n/app\nprod\nhello from the context\n"
    );
    // The RUN step's changes to root-owned files, kept root's.
    let check = "cat /etc/motd /greeting; test -e /etc/conf.d || echo no conf.d; \
                 test -e /bin/vi || echo no vi; stat -c '%U %a %n' /etc/passwd /etc/group /home/alice";
    let output = stdout_of(&env, &["run", "--rm", "app:1.0", "--", check]);
    assert_eq!(
        output,
        "edited\nhello\nno conf.d\nno vi\nroot 644 /etc/passwd\nroot 644 /etc/group\nalice 755 /home/alice\n"
    );
    // `-- cmd` replaces CMD (the ENTRYPOINT stays); --workdir and --env override the image's.
    let output = stdout_of(
        &env,
        &[
            "run",
            "--rm",
            "--workdir",
            "/tmp",
            "--env",
            "APP_MODE=dev",
            "app:1.0",
            "--",
            "pwd; echo $APP_MODE",
        ],
    );
    assert_eq!(output, "/tmp\ndev\n");
    // --user overrides USER.
    let output = stdout_of(&env, &["run", "--rm", "--user", "0", "app:1.0", "--", "id -u"]);
    assert_eq!(output, "0\n");
    // The history: every step, the config-only ones without a layer.
    let history = ok(&env, &["history", "app:1.0"]);
    assert_eq!(history.lines().count(), 2 + 9, "import + 8 steps + header: {history}");
    assert_eq!(layer_digests(&env, "app:1.0").len(), 3, "import, RUN, COPY");
    assert!(containers(&env).is_empty(), "no build container is left: {:?}", containers(&env));
    nothing_left_running(&env);
}

#[test]
fn the_build_cache_reruns_from_the_changed_step_and_a_failing_run_leaves_nothing() {
    if !require_root(
        "the_build_cache_reruns_from_the_changed_step_and_a_failing_run_leaves_nothing",
    ) {
        return;
    }
    let env = TestEnv::new();
    build_context(&env);
    let first = ok(&env, &["build", "-t", "app:1.0", "app"]);
    // A change of COPY's source: that step and every later one run again.
    fs::write(env.path().join("app/hello.txt"), "changed\n").unwrap();
    let second = ok(&env, &["build", "-t", "app:1.0", "app"]);
    let (cached, ran) = cached_steps(&second);
    assert_eq!(cached, vec![3], "{second}");
    assert_eq!(ran, vec![4, 5, 6, 7, 8, 9, 10], "{second}");
    assert_ne!(built_digest(&first), built_digest(&second));
    let output = stdout_of(&env, &["run", "--rm", "app:1.0", "--", "cat hello.txt"]);
    assert_eq!(output, "changed\n");
    // --no-cache runs every step.
    let third = ok(&env, &["build", "--no-cache", "-t", "app:1.0", "app"]);
    let (cached, ran) = cached_steps(&third);
    assert!(cached.is_empty(), "{third}");
    assert_eq!(ran, vec![3, 4, 5, 6, 7, 8, 9, 10], "{third}");
    // A build argument changes the RUN that uses it.
    let fourth = ok(&env, &["build", "--build-arg", "GREETING=hi", "-t", "app:2.0", "app"]);
    let (_, ran) = cached_steps(&fourth);
    assert!(ran.contains(&3), "{fourth}");
    let output = stdout_of(&env, &["run", "--rm", "app:2.0", "--", "cat /greeting"]);
    assert_eq!(output, "hi\n");

    // A failing RUN: one line naming the Dockerfile's line, 125, no build container, no mount.
    fs::create_dir(env.path().join("bad")).unwrap();
    fs::write(
        env.path().join("bad/Dockerfile"),
        "FROM base:1.0\nENV A=1\nRUN exit 3\nCMD [\"/bin/true\"]\n",
    )
    .unwrap();
    let (failed, output) = stage5(&env, &["build", "-t", "bad:1.0", "bad"]);
    assert_eq!(code(&output), 125, "{failed}");
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{failed}");
    assert!(stderr.starts_with("stage5-images: error: bad/Dockerfile:3: "), "{failed}");
    assert!(stderr.contains("3"), "{failed}");
    assert!(!text(&output.stdout).contains("step 4/4"), "{failed}");
    let ps = stdout_of(&env, &["ps"]);
    assert_eq!(ps.lines().count(), 1, "only the header: {ps}");
    assert!(containers(&env).is_empty(), "{:?}", containers(&env));
    let images = stdout_of(&env, &["images"]);
    assert!(!images.contains("bad "), "{images}");
    nothing_left_running(&env);
}

#[test]
fn df_shows_images_sharing_a_layer_and_the_containers() {
    if !require_root("df_shows_images_sharing_a_layer_and_the_containers") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    ok(&env, &["import", "rootfs", "base:1.0"]);
    ok(&env, &["run", "--name", "web", "base:1.0", "--", "/bin/sh", "-c", "echo hi > /etc/motd"]);
    ok(&env, &["commit", "web", "base:1.1"]);
    let (df, output) = stage5(&env, &["df"]);
    assert_eq!(code(&output), 0, "{df}");
    assert!(df.contains("2 images: 2 distinct layers"), "{df}");
    assert!(df.contains("  web  "), "{df}");
    // Regression candidate: stage 4's part names the container's base; for an image that is
    // its image, not the empty `layers/init` directory stacked on top of its layers.
    assert!(!df.contains("layers/init"), "df names the init layer as the container's base: {df}");
    settings(&env).bind(|| insta::assert_snapshot!("stage5_df", df));
}

#[test]
fn the_store_is_an_oci_image_layout() {
    if !require_root("the_store_is_an_oci_image_layout") {
        return;
    }
    let env = TestEnv::new();
    env.namespaced_rootfs("rootfs");
    ok(&env, &["import", "rootfs", "base:1.0"]);
    let ls = shell_ok(&env, "ls store");
    let layout = shell_ok(&env, "cat store/oci-layout");
    let value: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(env.path().join("store/oci-layout")).unwrap())
            .unwrap();
    assert_eq!(value["imageLayoutVersion"], "1.0.0");
    let index = shell_ok(&env, "python3 -m json.tool store/index.json");
    let value: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(env.path().join("store/index.json")).unwrap())
            .unwrap();
    assert_eq!(value["schemaVersion"], 2);
    let manifests = value["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["annotations"]["org.opencontainers.image.ref.name"], "base:1.0");
    let blobs = shell_ok(&env, "ls store/blobs/sha256");
    assert_eq!(names_in(&env.path().join("store/blobs/sha256")).len(), 3, "{blobs}");
    // Each blob's name is the sha256 of its bytes.
    for name in names_in(&env.path().join("store/blobs/sha256")) {
        let output = run(Command::new("sha256sum")
            .arg(format!("store/blobs/sha256/{name}"))
            .current_dir(env.path()));
        assert!(text(&output.stdout).starts_with(&name), "{}", text(&output.stdout));
    }
    let shown = format!("{ls}{layout}{index}{blobs}");
    settings(&env).bind(|| insta::assert_snapshot!("stage5_layout", shown));
}

#[test]
fn save_writes_a_tar_that_load_reads_into_another_store() {
    if !require_root("save_writes_a_tar_that_load_reads_into_another_store") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    ok(&env, &["import", "rootfs", "base:1.0"]);
    ok(
        &env,
        &["run", "--name", "web", "base:1.0", "--", "/bin/sh", "-c", "echo saved > /etc/motd"],
    );
    ok(&env, &["commit", "web", "base:1.1"]);
    let save = ok(&env, &["save", "base:1.1", "-o", "base.tar"]);
    let listing = shell_ok(&env, "tar -tf base.tar");
    for entry in ["oci-layout", "index.json", "manifest.json", "blobs/sha256/"] {
        assert!(listing.lines().any(|line| line == entry), "{listing}");
    }
    let load = ok(&env, &["--root", "store2", "load", "-i", "base.tar"]);
    assert!(load.contains("loaded base:1.1 "), "{load}");
    let images = ok(&env, &["--root", "store2", "images"]);
    let (ran, output) =
        stage5(&env, &["--root", "store2", "run", "--rm", "base:1.1", "--", "cat", "/etc/motd"]);
    assert_eq!(code(&output), 0, "{ran}");
    assert_eq!(text(&output.stdout), "saved\n");
    // The same image, by its digest, in both stores.
    assert_eq!(
        inspect(&env, "base:1.1")["digest"],
        inspect_in(&env, "store2", "base:1.1")["digest"]
    );
    // Loading it again adds nothing.
    let again = ok(&env, &["--root", "store2", "load", "-i", "base.tar"]);
    assert!(again.contains("0 new blobs"), "{again}");
    let shown = format!("{save}{listing}{load}{images}{ran}");
    settings(&env).bind(|| insta::assert_snapshot!("stage5_save_load", shown));
    nothing_left_running(&env);
}

#[test]
fn bad_input_is_one_line_exit_125_and_leaves_nothing_half_made() {
    if !require_root("bad_input_is_one_line_exit_125_and_leaves_nothing_half_made") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    ok(&env, &["import", "rootfs", "base:1.0"]);
    // Two small images of their own layers: one loses its layer blob, one gets a flipped byte.
    for name in ["gone", "bent"] {
        let dir = env.path().join(name);
        fs::create_dir_all(dir.join("etc")).unwrap();
        let filler: String = (0..20_000).map(|i| format!("{name} line {i}\n")).collect();
        fs::write(dir.join("etc/data"), filler).unwrap();
        ok(&env, &["import", name, &format!("{name}:1")]);
    }
    let gone = layer_digests(&env, "gone:1").remove(0);
    fs::remove_file(env.path().join(blob(&gone))).unwrap();
    let bent = layer_digests(&env, "bent:1").remove(0);
    let bent_path = env.path().join(blob(&bent));
    let mut bytes = fs::read(&bent_path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&bent_path, bytes).unwrap();
    fs::create_dir(env.path().join("ctx")).unwrap();
    fs::write(env.path().join("ctx/Dockerfile"), "FROM base:1.0\nRUN true\nFROBNICATE now\n")
        .unwrap();

    let mut shown = String::new();
    let cases: &[&[&str]] = &[
        &["run", "nosuch", "--", "/bin/true"],
        &["run", "base:9.9", "--", "/bin/true"],
        &["run", "UPPER:x", "--", "/bin/true"],
        &["tag", "base:1.0", "UPPER:x"],
        &["build", "-t", "app:1.0", "ctx"],
        &["run", "gone:1", "--", "/bin/true"],
        &["run", "bent:1", "--", "/bin/true"],
        &["run", "--rootfs", "rootfs", "base:1.0", "--", "/bin/true"],
    ];
    let mut problems = Vec::new();
    for args in cases {
        let (transcript, output) = stage5(&env, args);
        if code(&output) != 125 || text(&output.stderr).lines().count() != 1 {
            problems.push(format!("not one line and 125: {transcript}"));
        }
        shown.push_str(&transcript);
    }
    let expect = |needle: &str, why: &str, problems: &mut Vec<String>| {
        if !shown.contains(needle) {
            problems.push(format!("{why}: no {needle:?} in the transcript"));
        }
    };
    expect(
        "ctx/Dockerfile:3: unknown instruction FROBNICATE",
        "the Dockerfile's line",
        &mut problems,
    );
    expect(gone.strip_prefix("sha256:").unwrap(), "the missing blob named", &mut problems);
    expect(
        &format!("{} is corrupt", bent_path.display()),
        "the corrupt blob named (a digest mismatch)",
        &mut problems,
    );
    expect("UPPER", "the bad reference named", &mut problems);
    expect("give an image or --rootfs, not both", "image and --rootfs", &mut problems);

    // Nothing half-made: no container, no unpacked layer of the broken images, nothing for gc.
    assert!(containers(&env).is_empty(), "{:?}", containers(&env));
    let (gc, output) = stage5(&env, &["gc"]);
    assert_eq!(code(&output), 0, "{gc}");
    if !gc.contains("no unused blobs or layers") {
        problems.push(format!("gc found something: {gc}"));
    }
    let store = env.path().join("store");
    let leftovers: Vec<String> = names_in(&store)
        .into_iter()
        .filter(|name| name.starts_with('.') || name.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    for digest in diff_ids(&env, "bent:1") {
        let dir = store.join("layers").join(digest.strip_prefix("sha256:").unwrap());
        assert!(!dir.exists(), "a half-unpacked layer: {}", dir.display());
    }
    nothing_left_running(&env);
    shown.push_str(&gc);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    for args in cases {
        let (transcript, output) = stage5(&env, args);
        check_one_line_125(&transcript, &output);
    }
    settings(&env).bind(|| insta::assert_snapshot!("stage5_errors", shown));
}

#[test]
fn dry_run_of_an_image_stacks_its_layers_idmapped() {
    if !require_root("dry_run_of_an_image_stacks_its_layers_idmapped") {
        return;
    }
    let env = TestEnv::new();
    build_context(&env);
    ok(&env, &["build", "-t", "app:1.0", "app"]);
    let (plan, output) = stage5(&env, &["run", "--dry-run", "--name", "web", "app:1.0"]);
    assert_eq!(code(&output), 0, "{plan}");
    assert!(containers(&env).is_empty(), "a dry run makes no container");
    // Three layers and the init layer, each idmapped, stacked topmost first.
    let ids: Vec<String> = diff_ids(&env, "app:1.0")
        .iter()
        .map(|id| id.strip_prefix("sha256:").unwrap().to_string())
        .collect();
    let mut from = 0;
    for (number, dir) in ["init", &ids[2], &ids[1], &ids[0]].iter().enumerate() {
        // The init layer (empty mount points) sits beside layers/, which only root enters.
        let path =
            if *dir == "init" { "store/init".to_string() } else { format!("store/layers/{dir}") };
        let open = format!("{path}\", OPEN_TREE_CLONE|OPEN_TREE_CLOEXEC) = <lower{number}>");
        let at = plan[from..].find(&open).unwrap_or_else(|| panic!("no {open}: {plan}"));
        from += at;
        let idmap = format!(
            "mount_setattr(<lower{number}>, \"\", AT_EMPTY_PATH, {{attr_set=MOUNT_ATTR_IDMAP"
        );
        assert!(plan[from..].contains(&idmap), "{plan}");
    }
    let overlay =
        plan.lines().find(|line| line.contains("\"overlay\", 0, \"lowerdir=")).expect(&plan);
    assert_eq!(overlay.matches("/lower").count(), 4, "{overlay}");
    assert!(overlay.contains("lower0:") && overlay.contains("/lower3,upperdir="), "{overlay}");
    assert!(plan.contains("setuid(1000)"), "USER alice: {plan}");
    assert!(plan.contains("execve(\"/bin/sh\", [\"/bin/sh\", \"-c\", \"id; pwd;"), "{plan}");
    settings(&env).bind(|| insta::assert_snapshot!("stage5_dry_run", plan));
}

/// A dry run checks its plan on the image's real layers, so it unpacks the ones not unpacked
/// yet: it writes nothing of the plan it prints, and says what it did write.
#[test]
fn a_dry_run_says_which_layers_it_unpacked() {
    if !require_root("a_dry_run_says_which_layers_it_unpacked") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    ok(&env, &["import", "rootfs", "base:1.0"]);
    // The image again, as blobs only: saved, removed (gc takes its unpacked layer), loaded.
    ok(&env, &["save", "base:1.0", "-o", "base.tar"]);
    ok(&env, &["rmi", "base:1.0"]);
    ok(&env, &["gc"]);
    let layers = env.path().join("store/layers");
    let unpacked = || names_in(&layers).into_iter().filter(|name| !name.starts_with('.'));
    assert_eq!(unpacked().count(), 0, "gc left a layer: {:?}", names_in(&layers));
    ok(&env, &["load", "-i", "base.tar"]);
    assert_eq!(unpacked().count(), 0, "load unpacks nothing");

    let dry_run = ["run", "--dry-run", "base:1.0", "--", "/bin/true"];
    let (shown, output) = stage5(&env, &dry_run);
    assert_eq!(code(&output), 0, "{shown}");
    let said = text(&output.stderr);
    assert!(
        said.contains(
            "stage5-images: the dry run unpacked 1 layer of base:1.0 into the store's layers/"
        ) && said.contains("its plan is checked on it ("),
        "{said}"
    );
    let layer = diff_ids(&env, "base:1.0")[0].strip_prefix("sha256:").unwrap().to_string();
    assert_eq!(unpacked().collect::<Vec<_>>(), vec![layer], "what it said it unpacked");
    assert!(containers(&env).is_empty(), "a dry run makes no container");
    // Unpacked now: the next dry run writes nothing at all, and says nothing of layers.
    let (shown, output) = stage5(&env, &dry_run);
    assert_eq!(code(&output), 0, "{shown}");
    assert!(!text(&output.stderr).contains("unpacked"), "{shown}");
}

#[test]
fn umoci_and_skopeo_read_and_write_what_stage5_does() {
    if !require_root("umoci_and_skopeo_read_and_write_what_stage5_does") {
        return;
    }
    for tool in ["umoci", "skopeo"] {
        if !host_has(tool) {
            skip("umoci_and_skopeo_read_and_write_what_stage5_does", tool, "not installed");
            return;
        }
    }
    let env = TestEnv::new();
    base(&env);
    ok(&env, &["import", "rootfs", "base:1.0"]);
    ok(
        &env,
        &[
            "run",
            "--name",
            "web",
            "base:1.0",
            "--",
            "/bin/sh",
            "-c",
            "echo committed > /etc/motd; rm /bin/vi",
        ],
    );
    ok(&env, &["commit", "web", "base:1.1"]);
    let mut shown = String::new();
    let mut problems = Vec::new();

    // Saved, untarred: umoci unpacks it (whiteouts applied), skopeo copies it.
    shown += &ok(&env, &["save", "base:1.1", "-o", "base.tar"]);
    shown += &shell_ok(&env, "mkdir oci && tar -xf base.tar -C oci");
    shown += &shell_ok(&env, "umoci unpack --image oci:base:1.1 bundle");
    shown +=
        &shell_ok(&env, "cat bundle/rootfs/etc/motd; test -e bundle/rootfs/bin/vi || echo no vi");
    let motd = fs::read_to_string(env.path().join("bundle/rootfs/etc/motd")).unwrap();
    assert_eq!(motd, "committed\n");
    assert!(!env.path().join("bundle/rootfs/bin/vi").exists());
    shown += &shell_ok(&env, "skopeo --insecure-policy copy -q oci:oci:base:1.1 dir:out && ls out");
    assert!(env.path().join("out/manifest.json").is_file());
    // The store itself is a layout skopeo reads.
    shown += &shell_ok(&env, "skopeo --insecure-policy inspect --raw oci:store:base:1.1 | python3 -c 'import json,sys; print(len(json.load(sys.stdin)[\"layers\"]), \"layers\")'");

    // Made by umoci: an OCI layout, tarred, loaded, run.
    shown += &shell_ok(
        &env,
        "umoci init --layout made && umoci new --image made:v1 && \
         umoci unpack --image made:v1 mb && cp -a rootfs/. mb/rootfs/ && \
         echo made by umoci > mb/rootfs/etc/motd && umoci repack --image made:v1 mb && \
         umoci config --image made:v1 --config.cmd /bin/cat --config.cmd /etc/motd && \
         tar -C made -cf made.tar .",
    );
    let (load, output) = stage5(&env, &["load", "-i", "made.tar"]);
    shown += &load;
    if code(&output) != 0 {
        problems.push(format!("load of umoci's layout failed: {load}"));
    } else {
        // umoci's ref name is the tag alone (`made:v1` is the layout `made`, tag `v1`).
        let (ran, output) = stage5(&env, &["run", "--rm", "v1"]);
        let (ran_by_name, output_by_name) = stage5(&env, &["run", "--rm", "made:v1"]);
        if text(&output.stdout) != "made by umoci\n"
            && text(&output_by_name.stdout) != "made by umoci\n"
        {
            let images = ok(&env, &["images"]);
            problems.push(format!(
                "the image umoci tagged v1 cannot be run by its tag:\n{images}{ran}{ran_by_name}"
            ));
        }
        shown += if code(&output) == 0 { &ran } else { &ran_by_name };
    }

    // skopeo to a docker-archive (what `docker save` writes), loaded, run.
    shown += &shell_ok(
        &env,
        "skopeo --insecure-policy copy -q oci:oci:base:1.1 docker-archive:docker.tar:dock:1",
    );
    let (load, output) = stage5(&env, &["load", "-i", "docker.tar"]);
    shown += &load;
    if code(&output) != 0 {
        problems.push(format!("load of a docker-archive failed: {load}"));
    } else {
        let (ran, output) = stage5(&env, &["run", "--rm", "dock:1", "--", "cat", "/etc/motd"]);
        shown += &ran;
        if text(&output.stdout) != "committed\n" {
            let images = ok(&env, &["images"]);
            problems.push(format!(
                "a docker-archive tagged dock:1 cannot be run as dock:1:\n{images}{ran}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    nothing_left_running(&env);
    settings(&env).bind(|| insta::assert_snapshot!("stage5_umoci_skopeo", shown));
}

#[test]
fn one_layer_is_stored_once_shared_and_collected_when_nothing_uses_it() {
    if !require_root("one_layer_is_stored_once_shared_and_collected_when_nothing_uses_it") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    let blobs_dir = env.path().join("store/blobs/sha256");
    let layers_dir = env.path().join("store/layers");
    // The same rootfs twice: the same layer, stored once.
    ok(&env, &["import", "rootfs", "base:1.0"]);
    ok(&env, &["import", "rootfs", "again:1.0"]);
    assert_eq!(layer_digests(&env, "base:1.0"), layer_digests(&env, "again:1.0"));
    assert_eq!(diff_ids(&env, "base:1.0"), diff_ids(&env, "again:1.0"));
    let mut expected = BTreeSet::new();
    for image in ["base:1.0", "again:1.0"] {
        let value = inspect(&env, image);
        expected.insert(value["digest"].as_str().unwrap().to_string());
        expected.insert(value["manifest"]["config"]["digest"].as_str().unwrap().to_string());
        expected.extend(layer_digests(&env, image));
    }
    let stored: BTreeSet<String> =
        names_in(&blobs_dir).into_iter().map(|name| format!("sha256:{name}")).collect();
    assert_eq!(stored, expected, "one layer blob, a config and a manifest per image");

    // Two images over one base: one unpacked directory for the base layer.
    ok(&env, &["run", "--name", "web", "base:1.0", "--", "/bin/sh", "-c", "echo 1 > /one"]);
    ok(&env, &["commit", "web", "base:1.1"]);
    ok(&env, &["run", "--name", "user", "base:1.1", "--", "/bin/cat", "/one"]);
    ok(&env, &["run", "--rm", "again:1.0", "--", "/bin/true"]);
    // ps says which image each container runs.
    let ps = stdout_of(&env, &["ps"]);
    assert!(ps.starts_with("CONTAINER ID  NAME  IMAGE     STATUS"), "{ps}");
    for (name, image) in [("web", "base:1.0"), ("user", "base:1.1")] {
        let row = ps.lines().find(|line| line.split_whitespace().nth(1) == Some(name));
        assert_eq!(row.and_then(|row| row.split_whitespace().nth(2)), Some(image), "{ps}");
    }
    let all_ids: BTreeSet<String> = diff_ids(&env, "base:1.1")
        .into_iter()
        .map(|id| id.strip_prefix("sha256:").unwrap().to_string())
        .collect();
    let unpacked: BTreeSet<String> = names_in(&layers_dir)
        .into_iter()
        .filter(|name| name != "init" && !name.starts_with('.'))
        .collect();
    assert_eq!(unpacked, all_ids, "{:?}", names_in(&layers_dir));
    let top = diff_ids(&env, "base:1.1").pop().unwrap();
    let top_dir = layers_dir.join(top.strip_prefix("sha256:").unwrap());
    let top_blob = layer_digests(&env, "base:1.1").pop().unwrap();

    // Used by a container: rmi is refused, naming it; --force untags, the layer stays.
    let (refused, output) = stage5(&env, &["rmi", "base:1.1"]);
    check_one_line_125(&refused, &output);
    assert!(refused.contains("user"), "names the container: {refused}");
    let forced = ok(&env, &["rmi", "--force", "base:1.1"]);
    assert!(forced.contains("untagged base:1.1"), "{forced}");
    assert!(!stdout_of(&env, &["images"]).contains("1.1"));
    assert!(top_dir.is_dir() && env.path().join(blob(&top_blob)).is_file(), "{forced}");
    let output = stdout_of(&env, &["start", "user"]);
    assert_eq!(output, "1\n", "the container still runs on its layers");
    // Once the container is gone, gc takes the blobs and the unpacked layer, and says so.
    ok(&env, &["rm", "user", "web"]);
    let gc = ok(&env, &["gc"]);
    assert!(gc.contains(&format!("removed blob {top_blob}")), "{gc}");
    assert!(gc.contains(&format!("removed unpacked layer {}", top_dir.display())), "{gc}");
    assert!(!top_dir.exists() && !env.path().join(blob(&top_blob)).exists(), "{gc}");
    // The base layer, which tags still use, stays.
    let base_layer = layer_digests(&env, "base:1.0").remove(0);
    assert!(env.path().join(blob(&base_layer)).is_file());
    let again = ok(&env, &["gc"]);
    assert!(again.contains("no unused blobs or layers"), "{again}");
    nothing_left_running(&env);
}

#[test]
fn start_runs_on_the_recorded_image_after_its_tag_moves() {
    if !require_root("start_runs_on_the_recorded_image_after_its_tag_moves") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    ok(&env, &["import", "rootfs", "base:1.0"]);
    let output =
        stdout_of(&env, &["run", "--name", "keep", "base:1.0", "--", "/bin/cat", "/etc/motd"]);
    assert_eq!(output, "welcome\n");
    let old = inspect(&env, "base:1.0")["digest"].as_str().unwrap().to_string();
    // Another image, and the tag moved to it.
    ok(
        &env,
        &["run", "--name", "other", "base:1.0", "--", "/bin/sh", "-c", "echo moved > /etc/motd"],
    );
    ok(&env, &["commit", "other", "newer:1"]);
    ok(&env, &["tag", "newer:1", "base:1.0"]);
    let moved = inspect(&env, "base:1.0")["digest"].as_str().unwrap().to_string();
    assert_ne!(old, moved);
    // A new container of base:1.0 sees the new image; `start keep` still the old one.
    let output = stdout_of(&env, &["run", "--rm", "base:1.0", "--", "/bin/cat", "/etc/motd"]);
    assert_eq!(output, "moved\n");
    let output = stdout_of(&env, &["start", "keep"]);
    assert_eq!(output, "welcome\n", "start ran on the tag's new image");
    // And gc, with the old image untagged, keeps what `keep` runs on.
    ok(&env, &["gc"]);
    let output = stdout_of(&env, &["start", "keep"]);
    assert_eq!(output, "welcome\n");
    nothing_left_running(&env);
}

/// A Debian bookworm made by debootstrap, cached in `target/debootstrap-bookworm/rootfs`
/// (`complete` is written last; `lock` keeps two tests from making it at once).
fn debootstrap_bookworm() -> PathBuf {
    let cache = workspace_root().join("target/debootstrap-bookworm");
    fs::create_dir_all(&cache).unwrap();
    let lock = fs::File::create(cache.join("lock")).unwrap();
    // SAFETY: flock on a valid, open fd; released when `lock` is dropped.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock");
    let rootfs = cache.join("rootfs");
    if cache.join("complete").is_file() {
        return rootfs;
    }
    assert!(
        host_has("debootstrap"),
        "debootstrap is not installed: `apt-get install debootstrap` (scripts/setup does)"
    );
    if rootfs.exists() {
        let output = run(Command::new("rm").arg("-rf").arg(&rootfs));
        assert!(output.status.success(), "{}", text(&output.stderr));
    }
    let started = Instant::now();
    let output = run(Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&rootfs)
        .arg("http://deb.debian.org/debian")
        .stdout(Stdio::null()));
    assert!(output.status.success(), "debootstrap failed: {}", text(&output.stderr));
    eprintln!("debootstrap bookworm: {:?}", started.elapsed());
    fs::write(cache.join("complete"), "").unwrap();
    rootfs
}

#[test]
fn a_debian_image_built_in_a_user_namespace_runs_as_its_user() {
    if !require_root("a_debian_image_built_in_a_user_namespace_runs_as_its_user") {
        return;
    }
    let debian = debootstrap_bookworm();
    let env = TestEnv::new();
    env.open_to_namespaced_root();
    let started = Instant::now();
    let import = ok(&env, &["import", debian.to_str().unwrap(), "debian:12"]);
    eprintln!("import debian: {:?}", started.elapsed());
    fs::create_dir(env.path().join("ctx")).unwrap();
    fs::write(
        env.path().join("ctx/Dockerfile"),
        "FROM debian:12\n\
         RUN useradd -m alice && echo edited >> /etc/issue && rm -rf /usr/share/doc && apt-get --version\n\
         USER alice\n\
         WORKDIR /home/alice\n\
         CMD [\"/bin/sh\", \"-c\", \"id; pwd; echo $HOME; tail -n 1 /etc/issue; test -e /usr/share/doc || echo no doc\"]\n",
    )
    .unwrap();
    let started = Instant::now();
    let build = ok(&env, &["build", "-t", "debian-app:1", "ctx"]);
    eprintln!("build over debian: {:?}", started.elapsed());
    assert!(build.contains("apt "), "apt-get --version ran: {build}");
    let started = Instant::now();
    let output = stdout_of(&env, &["run", "--rm", "debian-app:1"]);
    eprintln!("run debian: {:?}", started.elapsed());
    assert_eq!(
        output,
        "uid=1000(alice) gid=1000(alice) groups=1000(alice)\n/home/alice\n/home/alice\nedited\nno doc\n",
        "{import}{build}"
    );
    // The RUN's changes are root's inside: /etc/passwd, /etc/shadow, alice's home hers.
    let check = "stat -c '%U:%G %a %n' /etc/passwd /etc/shadow /home/alice /etc/issue";
    let output = stdout_of(
        &env,
        &["run", "--rm", "--user", "0", "debian-app:1", "--", "/bin/sh", "-c", check],
    );
    assert!(
        output.starts_with("root:root 644 /etc/passwd\nroot:shadow 640 /etc/shadow\nalice:alice "),
        "{output}"
    );
    nothing_left_running(&env);
}

#[test]
fn without_root_import_run_commit_and_save_work_in_the_users_store() {
    if !require_root("without_root_import_run_commit_and_save_work_in_the_users_store") {
        return;
    }
    let env = TestEnv::new();
    let rootfs = base(&env);
    let chown = run(Command::new("chown").args(["-R", "65534:65534"]).arg(&rootfs));
    assert!(chown.status.success());
    fs::create_dir(env.path().join("store")).unwrap();
    nix::unistd::chown(&env.path().join("store"), Some(65534.into()), Some(65534.into())).unwrap();
    let as_nobody = |args: &[&str]| {
        let output = run(Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(bin(STAGE))
            .args(["--root", "store"])
            .args(args)
            .current_dir(env.path())
            .stdin(Stdio::null()));
        let shown = transcript(
            &format!("stage5-images --root store {}   # as uid 65534", args.join(" ")),
            &output,
        );
        (shown, output)
    };
    let (import, output) = as_nobody(&["import", "rootfs", "base:1.0"]);
    let stderr = text(&output.stderr);
    if code(&output) != 0 {
        // What the machine lacks, in one line.
        assert_eq!(stderr.lines().count(), 1, "{import}");
        panic!("import without root failed: {import}");
    }
    let script = "echo mine > /etc/motd; rm /bin/ls; rm -r /etc/conf.d; id -u";
    let (ran, output) = as_nobody(&[
        "run",
        "--name",
        "mine",
        "--cgroups",
        "optional",
        "base:1.0",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    assert!(!text(&output.stderr).contains("refuses unprivileged user namespaces"), "{ran}");
    assert_eq!(code(&output), 0, "{ran}");
    assert_eq!(text(&output.stdout), "0\n", "root inside: {ran}");
    let (commit, output) = as_nobody(&["commit", "mine", "base:1.1"]);
    assert_eq!(code(&output), 0, "{commit}");
    let (again, output) = as_nobody(&[
        "run",
        "--rm",
        "--cgroups",
        "optional",
        "base:1.1",
        "--",
        "/bin/cat",
        "/etc/motd",
    ]);
    assert_eq!(code(&output), 0, "{again}");
    assert_eq!(text(&output.stdout), "mine\n", "{again}");
    // Saved where the user may write (the test's directory is root's).
    fs::create_dir(env.path().join("out")).unwrap();
    nix::unistd::chown(&env.path().join("out"), Some(65534.into()), Some(65534.into())).unwrap();
    let (save, output) = as_nobody(&["save", "base:1.1", "-o", "out/mine.tar"]);
    assert_eq!(code(&output), 0, "{save}");
    assert_eq!(fs::metadata(env.path().join("out/mine.tar")).unwrap().uid(), 65534);
    // The layers hold the ids *inside*: the user's own files are root's (0/0) there, as
    // they are when root imports and commits, so the image means the same when loaded
    // anywhere else.
    let mut problems = Vec::new();
    let (inspected, output) = as_nobody(&["inspect", "--json", "base:1.1"]);
    assert_eq!(code(&output), 0, "{inspected}");
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let layers = value["manifest"]["layers"].as_array().unwrap().clone();
    let digest = |at: usize| layers[at]["digest"].as_str().unwrap().to_string();
    for (image, digest) in [("base:1.0", digest(0)), ("base:1.1", digest(1))] {
        let listing = shell_ok(&env, &format!("tar --numeric-owner -tvzf {}", blob(&digest)));
        let foreign = not_root_owned(&listing);
        if !foreign.is_empty() {
            problems.push(format!(
                "{image}'s layer {digest} records host ids: {}",
                foreign[..foreign.len().min(4)].join("\n")
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    nothing_left_running(&env);
}

/// Writes and tars OCI layouts with hostile entries (python3's tarfile, which writes what it
/// is told): see [`hostile_load_writes_nothing_outside_the_store`].
const HOSTILE: &str = r#"
import hashlib, io, json, os, sys, tarfile, gzip
marker = sys.argv[1]

def add(tar, name, data=b"", kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

def layout(layer_entries, tag="evil:1"):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for entry in layer_entries:
            add(tar, *entry)
    raw = raw.getvalue()
    gz = gzip.compress(raw, mtime=0)
    blobs = {}
    def blob(data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest
    layer = blob(gz)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]}}).encode()
    config_digest = blob(config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": len(gz)}]}).encode()
    manifest_digest = blob(manifest)
    index = json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": tag}}]}).encode()
    return blobs, index

def write(path, blobs, index, extra):
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add(tar, "index.json", index)
        add(tar, "blobs/", kind=tarfile.DIRTYPE)
        add(tar, "blobs/sha256/", kind=tarfile.DIRTYPE)
        for digest, data in blobs.items():
            add(tar, "blobs/sha256/" + digest.split(":")[1], data)
        for entry in extra:
            add(tar, *entry)

plain, index = layout([("etc/", b"", tarfile.DIRTYPE), ("etc/ok", b"ok\n")])
write("dotdot.tar", plain, index, [("../escaped-dotdot", b"x\n"), ("blobs/../../escaped-dotdot2", b"x\n")])
write("absolute.tar", plain, index, [(marker + "-absolute", b"x\n")])
evil, index = layout([
    ("etc/", b"", tarfile.DIRTYPE),
    ("../escaped-layer", b"x\n"),
    ("link", b"", tarfile.SYMTYPE, marker + "-dir"),
    ("link/through-symlink", b"x\n"),
    ("abs", b"", tarfile.SYMTYPE, "/"),
    ("abs" + marker + "-via-abs", b"x\n"),
    ("hard", b"", tarfile.LNKTYPE, "../../../../../../etc/passwd"),
])
write("layer.tar", evil, index, [])
through, index = layout([
    ("etc/", b"", tarfile.DIRTYPE),
    ("link", b"", tarfile.SYMTYPE, marker + "-dir"),
    ("link/through-symlink", b"x\n"),
    ("abs", b"", tarfile.SYMTYPE, "/"),
    ("abs" + marker + "-via-abs", b"x\n"),
], "evil:2")
write("symlink.tar", through, index, [])
"#;

#[test]
fn hostile_load_writes_nothing_outside_the_store() {
    if !require_root("hostile_load_writes_nothing_outside_the_store") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    let marker = format!("/tmp/isolab-hostile-{}", std::process::id());
    fs::create_dir(format!("{marker}-dir")).unwrap();
    let output =
        run(Command::new("python3").args(["-c", HOSTILE, &marker]).current_dir(env.path()));
    assert!(output.status.success(), "{}", text(&output.stderr));
    // A sibling of the store, to see that nothing lands beside it.
    fs::create_dir(env.path().join("sibling")).unwrap();
    let sibling_before = describe_tree(&env.path().join("sibling"));
    let passwd_before = fs::read("/etc/passwd").unwrap();
    let mut shown = String::new();
    let mut problems = Vec::new();
    for tar in ["dotdot.tar", "absolute.tar"] {
        let (load, output) = stage5(&env, &["load", "-i", tar]);
        shown.push_str(&load);
        if code(&output) != 125 || text(&output.stderr).lines().count() != 1 {
            problems.push(format!("{tar} is not refused in one line: {load}"));
        }
    }
    // A layer that climbs out: load may keep its blob (it is opaque bytes), but run must
    // refuse to unpack it, or unpack it inside its layer directory only.
    // The second writes a file through a symlink the layer made (to a host directory, and
    // to /).
    for (tar, image) in [("layer.tar", "evil:1"), ("symlink.tar", "evil:2")] {
        let (load, output) = stage5(&env, &["load", "-i", tar]);
        shown.push_str(&load);
        if code(&output) == 0 {
            let (ran, output) = stage5(&env, &["run", "--rm", image, "--", "/bin/true"]);
            shown.push_str(&ran);
            if code(&output) != 125 {
                problems.push(format!("a layer that climbs out was unpacked and run: {ran}"));
            }
        }
    }
    let cleanup = || {
        let _ = fs::remove_dir_all(format!("{marker}-dir"));
        for suffix in ["-absolute", "-via-abs"] {
            let _ = fs::remove_file(format!("{marker}{suffix}"));
        }
    };
    let outside = [
        env.path().join("escaped-dotdot"),
        env.path().join("escaped-dotdot2"),
        env.path().join("escaped-layer"),
        env.path().join("store/escaped-layer"),
        env.path().join("store/layers/escaped-layer"),
        PathBuf::from(format!("{marker}-absolute")),
        PathBuf::from(format!("{marker}-dir/through-symlink")),
        PathBuf::from(format!("{marker}-via-abs")),
    ];
    let escaped: Vec<&PathBuf> = outside.iter().filter(|path| path.exists()).collect();
    let sibling_after = describe_tree(&env.path().join("sibling"));
    let passwd_after = fs::read("/etc/passwd").unwrap();
    cleanup();
    assert!(escaped.is_empty(), "written outside the store: {escaped:?}\n{shown}");
    assert_eq!(sibling_before, sibling_after);
    assert_eq!(passwd_before, passwd_after, "/etc/passwd changed");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(containers(&env).is_empty(), "{:?}", containers(&env));
    nothing_left_running(&env);
}

// The kernel copies an overlay's options into one page, and every lower's path is in them:
// stacked by its full path in the store, an image of 60 layers does not fit. In the default
// user namespace each layer is mounted idmapped at a short point in the container's directory,
// and it runs; without one, the refusal says why and what to do, before anything is made.
#[test]
fn an_image_of_sixty_layers_runs_and_the_page_limit_is_said_where_it_bites() {
    if !require_root("an_image_of_sixty_layers_runs_and_the_page_limit_is_said_where_it_bites") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    ok(&env, &["import", "rootfs", "base:1"]);
    let mut dockerfile = String::from("FROM base:1\n");
    for layer in 1..=60 {
        dockerfile.push_str(&format!("RUN echo {layer} > /layer{layer}\n"));
    }
    fs::create_dir_all(env.path().join("many")).unwrap();
    fs::write(env.path().join("many/Dockerfile"), dockerfile).unwrap();
    ok(&env, &["build", "-t", "many:1", "many"]);
    assert_eq!(layer_digests(&env, "many:1").len(), 61);
    let shown = ok(&env, &["run", "--rm", "many:1", "--", "/bin/sh", "-c", "cat /layer1 /layer60"]);
    assert!(shown.ends_with("1\n60\n"), "{shown}");
    let (refused, output) =
        stage5(&env, &["run", "--rm", "--ns", "mnt,pid,uts,ipc", "many:1", "--", "/bin/true"]);
    check_one_line_125(&refused, &output);
    assert!(refused.contains("with 62 lower layers, and mount(2) takes at most 4095"), "{refused}");
    assert!(containers(&env).is_empty(), "{:?}", containers(&env));
    assert!(mounts_under(env.path()).is_empty());
}

// COPY puts the context's files in the image as root's (or --chown's), as docker does: whose
// they were on the host says nothing about the image (regression: only the top was chowned).
#[test]
fn copy_makes_the_contexts_files_roots_or_chowns() {
    if !require_root("copy_makes_the_contexts_files_roots_or_chowns") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    ok(&env, &["import", "rootfs", "base:1"]);
    shell_ok(
        &env,
        "mkdir -p ctx/sub/deep && echo a > ctx/sub/deep/f && ln -s deep/f ctx/sub/link && \
         chown -hR 1234:1234 ctx && printf 'FROM base:1\\nCOPY sub /opt/sub\\nCOPY --chown=7:8 \
         sub /opt/theirs\\n' > ctx/Dockerfile",
    );
    ok(&env, &["build", "-t", "owned:1", "ctx"]);
    let listing = stdout_of(
        &env,
        &[
            "run",
            "--rm",
            "owned:1",
            "--",
            "/bin/sh",
            "-c",
            "cd /opt && find . | sort | while \
           read f; do stat -c '%n %u:%g' \"$f\"; done",
        ],
    );
    let expected = "\
. 0:0
./sub 0:0
./sub/deep 0:0
./sub/deep/f 0:0
./sub/link 0:0
./theirs 7:8
./theirs/deep 7:8
./theirs/deep/f 7:8
./theirs/link 7:8
";
    assert_eq!(listing, expected);
}

// Regressions of the attacker's pass: what an image holds never becomes a host user's, and no
// path or link someone else controls leads a root runtime out of the store.
#[test]
fn an_images_files_stay_out_of_host_users_reach_and_no_path_leads_out() {
    if !require_root("an_images_files_stay_out_of_host_users_reach_and_no_path_leads_out") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    // A setuid-root program in a layer: unpacked with its owner and mode, as the image says.
    shell_ok(&env, "cp rootfs/bin/busybox rootfs/bin/suid && chmod 4755 rootfs/bin/suid");
    ok(&env, &["import", "rootfs", "base:1"]);
    ok(&env, &["run", "--rm", "base:1", "--", "/bin/true"]);
    let layers = env.path().join("store/layers");
    let mode = fs::metadata(&layers).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o700, "store/layers is {mode:o}: host users could run its setuid files");
    // Nor the blobs, the same files packed (an image's /etc/shadow is in a layer's tar).
    for dir in ["store/layers", "store/blobs/sha256"] {
        let (as_nobody, output) =
            shell(&env, &format!("setpriv --reuid=65534 --regid=65534 --clear-groups ls {dir}"));
        assert_ne!(code(&output), 0, "{as_nobody}");
    }

    // COPY's destination is a path inside the image: `..` stops at its `/`.
    shell_ok(
        &env,
        "mkdir -p ctx && echo x > ctx/f && printf 'FROM base:1\\nCOPY f /../../../../escaped\\n' \
         > ctx/Dockerfile",
    );
    ok(&env, &["build", "-t", "esc:1", "ctx"]);
    let inside = stdout_of(&env, &["run", "--rm", "esc:1", "--", "cat", "/escaped"]);
    assert_eq!(inside, "x\n");
    assert!(!Path::new("/escaped").exists() && !env.path().join("escaped").exists());

    // save writes under a name of its own, never through a link planted beside the output.
    shell_ok(&env, "mkdir -p out && echo precious > victim && ln -s ../victim out/app.partial");
    ok(&env, &["save", "base:1", "-o", "out/app.tar"]);
    assert_eq!(fs::read_to_string(env.path().join("victim")).unwrap(), "precious\n");
    let saved = fs::symlink_metadata(env.path().join("out/app.tar")).unwrap();
    assert!(saved.is_file() && saved.len() > 1000, "{saved:?}");

    // A store whose layers/ is a link elsewhere is refused, and gc removes nothing there.
    shell_ok(&env, "mkdir -p decoy/important store2 && ln -s ../decoy store2/layers");
    let (refused, output) = stage5(&env, &["--root", "store2", "gc"]);
    assert_eq!(code(&output), 125, "{refused}");
    assert_eq!(text(&output.stderr).lines().count(), 1, "{refused}");
    assert!(text(&output.stderr).contains("follows no link"), "{refused}");
    assert!(env.path().join("decoy/important").is_dir());
    ok(&env, &["rmi", "esc:1", "base:1"]);
}

// Reproducible: with SOURCE_DATE_EPOCH (the reproducible-builds convention for "now"), the
// same rootfs imported into two stores, and the same Dockerfile built there, give the same
// manifest digests; without it only the layers agree (the configs record when).
#[test]
fn the_same_inputs_give_the_same_image_digests() {
    if !require_root("the_same_inputs_give_the_same_image_digests") {
        return;
    }
    let env = TestEnv::new();
    build_context(&env);
    let digest_in = |root: &str, epoch: Option<&str>| {
        let mut command = env.cmd(STAGE);
        if let Some(epoch) = epoch {
            command.env("SOURCE_DATE_EPOCH", epoch);
        }
        for args in [
            vec!["--root", root, "import", "rootfs", "base:1.0"],
            vec!["--root", root, "build", "-t", "app:1.0", "app"],
        ] {
            let output = run(command.args(&args));
            assert_eq!(code(&output), 0, "{}", text(&output.stderr));
            command = env.cmd(STAGE);
            if let Some(epoch) = epoch {
                command.env("SOURCE_DATE_EPOCH", epoch);
            }
        }
        let base = inspect_in(&env, root, "base:1.0")["digest"].as_str().unwrap().to_string();
        let app = inspect_in(&env, root, "app:1.0")["digest"].as_str().unwrap().to_string();
        (base, app)
    };
    let first = digest_in("one", Some("1700000000"));
    let second = digest_in("two", Some("1700000000"));
    assert_eq!(first, second);
    let (base, _) = digest_in("three", None);
    assert_ne!(base, first.0, "without SOURCE_DATE_EPOCH the config records the time");
    let history = stdout_of(&env, &["--root", "one", "history", "app:1.0"]);
    assert!(history.contains("2023-11-14 22:13:20"), "{history}");
    let output = run(env
        .cmd(STAGE)
        .env("SOURCE_DATE_EPOCH", "yesterday")
        .args(["--root", "one", "import", "rootfs", "x:1"]));
    assert_eq!(code(&output), 125);
    assert!(text(&output.stderr).contains("SOURCE_DATE_EPOCH=\"yesterday\" is not a number"));
}

// WORKDIR makes its directory when the image lacks it, as docker does, even after a USER that
// could not (regression: the next RUN failed on chdir, blamed on its own line).
#[test]
fn workdir_makes_its_directory() {
    if !require_root("workdir_makes_its_directory") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    ok(&env, &["import", "rootfs", "base:1"]);
    shell_ok(
        &env,
        "mkdir -p wd && printf 'FROM base:1\\nUSER 1000\\nWORKDIR /srv/made/here\\nRUN pwd > \
         /tmp/pwd; id -u >> /tmp/pwd\\nWORKDIR /etc\\nCMD [\"/bin/sh\", \"-c\", \"pwd; stat -c \
         %%u:%%a /srv/made/here\"]\\n' > wd/Dockerfile",
    );
    ok(&env, &["build", "-t", "wd:1", "wd"]);
    let shown = stdout_of(&env, &["run", "--rm", "wd:1"]);
    assert_eq!(shown, "/etc\n0:755\n");
    let history = stdout_of(&env, &["history", "wd:1"]);
    let made = history.lines().find(|line| line.contains("WORKDIR /srv/made/here")).unwrap();
    assert!(made.starts_with("sha256:"), "a layer made the directory: {history}");
    let existing = history.lines().find(|line| line.contains("WORKDIR /etc")).unwrap();
    assert!(existing.starts_with("- "), "no layer for a directory that is there: {history}");
}

// gc keeps what another tool keeps: an untagged entry of index.json (skopeo and umoci write
// them) still reaches its blobs, though no tag names it (regression: gc removed them).
#[test]
fn gc_keeps_the_blobs_of_untagged_index_entries() {
    if !require_root("gc_keeps_the_blobs_of_untagged_index_entries") {
        return;
    }
    let env = TestEnv::new();
    base(&env);
    ok(&env, &["import", "rootfs", "base:1"]);
    let layers = layer_digests(&env, "base:1");
    // The entry again, without its ref name; then the tag goes.
    shell_ok(
        &env,
        "python3 -c 'import json; p=\"store/index.json\"; i=json.load(open(p)); \
         e=dict(i[\"manifests\"][0]); e.pop(\"annotations\"); i[\"manifests\"].append(e); \
         json.dump(i, open(p, \"w\"))'",
    );
    ok(&env, &["rmi", "base:1"]);
    ok(&env, &["gc"]);
    for layer in layers {
        assert!(env.path().join(blob(&layer)).is_file(), "{layer} was removed");
    }
}
