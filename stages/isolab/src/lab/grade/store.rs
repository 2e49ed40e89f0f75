//! Stages 4 and 5's checks: a container store in the grader's directory, files named after
//! the task's token, planted in the base and written inside, then looked for on disk.
//!
//! Stage 4: the base stays as it was, the container's upper holds its writes, and `diff`
//! reads a whiteout as a deletion. Stage 5: a committed layer is in the OCI layout under its
//! own digest (every blob's sha256 is its name) and runs, and `load` refuses an archive whose
//! layer does not match its digest: the layer is recompressed in place (the gzip header's
//! MTIME field, RFC 1952 section 2.3.1), so that its size and its unpacked content (the
//! diff_id) are unchanged and only a digest check can tell.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use libisolab::digest::Digest;
use rand::Rng;

use super::{miss, plant, random_token, Miss, Ran, Task, Verdict};

/// Files planted in the rootfs for one check, never through a symlink (see `plant`);
/// removed again when dropped.
struct Planted(PathBuf, Vec<PathBuf>);

impl Planted {
    fn new(task: &Task, files: &[(&str, &str)]) -> Result<Planted, Miss> {
        let mut planted = Planted(task.rootfs.clone(), Vec::new());
        for (relative, content) in files {
            plant::plant(&task.rootfs, Path::new(relative), content.as_bytes(), 0o644).map_err(
                |error| Miss {
                    expected: format!(
                        "the grader plants {} in the rootfs",
                        task.rootfs.join(relative).display()
                    ),
                    happened: error.to_string(),
                },
            )?;
            planted.1.push(PathBuf::from(relative));
        }
        Ok(planted)
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        for relative in &self.1 {
            let _ = plant::remove(&self.0, relative);
        }
    }
}

/// A store of the task's own in the grader's directory, removed when dropped.
struct Store(PathBuf);

impl Store {
    fn new(task: &Task, what: &str) -> Store {
        Store(task.workdir.join(format!("{what}-{}", task.token)))
    }

    fn arg(&self) -> &OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The uppers of a stage 4 store: `containers/<id>/upper`.
fn uppers(store: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(store.join("containers")) else { return Vec::new() };
    entries.flatten().map(|entry| entry.path().join("upper")).filter(|p| p.is_dir()).collect()
}

// --- Stage 4 ---------------------------------------------------------------------------------

/// The container sees the base, its writes go to its upper, and the base stays as it was.
pub fn overlay_options(task: &Task) -> Verdict {
    let token = &task.token;
    let (base_secret, new_secret) = (random_token(), random_token());
    let base = format!("etc/lab-base-{token}");
    let added = format!("lab-new-{token}");
    let _planted = Planted::new(task, &[(&base, &base_secret)])?;
    let store = Store::new(task, "store");
    let name = format!("lab-{token}");
    let script = format!("cat /{base}; echo {new_secret} > /{added}; echo changed >> /{base}");
    let store_arg = store.0.display().to_string();
    let ran = task.run(&["--root", &store_arg, "--name", &name], &["/bin/sh", "-c", &script]);
    let expected = format!(
        "inside, /{base} (planted in the base) reads {base_secret}; after the run the base \
         is unchanged (no /{added}, /{base} as planted) and the container's upper \
         (containers/<id>/upper) holds /{added} and the changed /{base}"
    );
    if ran.code != Some(0) || ran.stdout.trim() != base_secret {
        return miss(expected, ran.told());
    }
    let base_now = fs::read_to_string(task.rootfs.join(&base)).unwrap_or_default();
    if task.rootfs.join(&added).exists() || base_now != base_secret {
        return miss(expected, "the write went to the base (the rootfs) itself");
    }
    let upper = uppers(&store.0).into_iter().find(|upper| upper.join(&added).is_file());
    let Some(upper) = upper else {
        return miss(expected, format!("no upper under {} holds /{added}", store.0.display()));
    };
    let added_now = fs::read_to_string(upper.join(&added)).unwrap_or_default();
    let changed_now = fs::read_to_string(upper.join(&base)).unwrap_or_default();
    if added_now.trim() != new_secret || !changed_now.ends_with("changed\n") {
        return miss(
            expected,
            format!(
                "{} holds {:?} and {} holds {:?}",
                upper.join(&added).display(),
                added_now.trim(),
                upper.join(&base).display(),
                changed_now
            ),
        );
    }
    Ok(())
}

/// `diff` names a file added (A), one changed (C), and one deleted inside (D: a whiteout).
pub fn diff_whiteouts(task: &Task) -> Verdict {
    let token = &task.token;
    let deleted = format!("etc/lab-del-{token}");
    let changed = format!("etc/lab-chg-{token}");
    let added = format!("lab-add-{token}");
    let _planted = Planted::new(task, &[(&deleted, "delete me\n"), (&changed, "change me\n")])?;
    let store = Store::new(task, "store");
    let name = format!("lab-{token}");
    let script = format!("rm /{deleted}; echo more >> /{changed}; echo new > /{added}");
    let store_arg = store.0.display().to_string();
    let ran = task.run(&["--root", &store_arg, "--name", &name], &["/bin/sh", "-c", &script]);
    if ran.code != Some(0) {
        return miss(format!("the run of `{script}` exits 0"), ran.told());
    }
    let diff = task.invoke(&["diff".as_ref(), "--root".as_ref(), store.arg(), name.as_ref()]);
    let want = [format!("D /{deleted}"), format!("C /{changed}"), format!("A /{added}")];
    let lines: Vec<&str> = diff.stdout.lines().map(str::trim).collect();
    let missing: Vec<&String> =
        want.iter().filter(|line| !lines.contains(&line.as_str())).collect();
    let expected = format!("after `{script}`, `diff {name}` lists {}, once each", want.join(", "));
    if diff.code != Some(0) || !missing.is_empty() {
        let missing: Vec<&str> = missing.iter().map(|line| line.as_str()).collect();
        return miss(expected, format!("missing: {} ({})", missing.join(", "), diff.told()));
    }
    // Each planted path once, as what happened to it: a deleted file listed `C` as well (a
    // whiteout taken for a change too) is as wrong as one not listed at all.
    for path in [&deleted, &changed, &added] {
        let about: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|line| line.split_once(' ').is_some_and(|(_, p)| p == format!("/{path}")))
            .collect();
        if about.len() != 1 {
            return miss(expected, format!("/{path} is listed as {}", about.join(" and ")));
        }
    }
    Ok(())
}

// --- Stage 5 ---------------------------------------------------------------------------------

/// `BIN --root STORE ARGS…`.
fn images(task: &Task, store: &Store, args: &[&str]) -> Ran {
    let mut all: Vec<&OsStr> = vec!["--root".as_ref(), store.arg()];
    all.extend(args.iter().map(OsStr::new));
    task.invoke(&all)
}

/// A blob of an OCI layout (or of an unpacked layout tar) and its bytes.
fn blob(layout: &Path, digest: &str) -> Result<Vec<u8>, String> {
    let hex = digest.strip_prefix("sha256:").ok_or_else(|| format!("{digest} is not sha256"))?;
    let path = layout.join("blobs/sha256").join(hex);
    fs::read(&path).map_err(|error| format!("cannot read {}: {error}", path.display()))
}

fn json(bytes: &[u8], what: &str) -> Result<serde_json::Value, String> {
    serde_json::from_slice(bytes).map_err(|error| format!("{what} is not JSON: {error}"))
}

/// The manifest that `index.json` of `layout` tags `reference`, and its digest.
fn manifest(layout: &Path, reference: &str) -> Result<(String, serde_json::Value), String> {
    let index_path = layout.join("index.json");
    let index = fs::read(&index_path)
        .map_err(|error| format!("cannot read {}: {error}", index_path.display()))?;
    let index = json(&index, "index.json")?;
    let entry = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|entry| {
            entry["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(reference)
        })
        .ok_or_else(|| format!("index.json tags no {reference}"))?;
    let digest = entry["digest"].as_str().unwrap_or_default().to_string();
    let body = blob(layout, &digest)?;
    Ok((digest.clone(), json(&body, &format!("manifest {digest}"))?))
}

/// Every blob `manifest` names, and the manifest itself, hash to their names.
fn check_blobs(
    layout: &Path,
    manifest_digest: &str,
    manifest: &serde_json::Value,
) -> Result<usize, String> {
    let mut digests = vec![manifest_digest.to_string()];
    digests.extend(manifest["config"]["digest"].as_str().map(str::to_string));
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    digests.extend(layers.iter().filter_map(|layer| layer["digest"].as_str().map(str::to_string)));
    for digest in &digests {
        let bytes = blob(layout, digest)?;
        let actual = Digest::of(&bytes).to_string();
        if &actual != digest {
            return Err(format!("blob {digest} hashes to {actual}"));
        }
    }
    Ok(layers.len())
}

/// `commit` makes the container's upper a layer: one more layer in the layout, every blob
/// under its own sha256, and the image runs with the container's changes (a file written,
/// one deleted, owned by root inside).
pub fn commit(task: &Task) -> Verdict {
    let token = &task.token;
    let secret = random_token();
    let deleted = format!("etc/lab-del-{token}");
    let written = format!("lab-{token}");
    let store = Store::new(task, "store");
    let (first, second) = (format!("lab-{token}:1"), format!("lab-{token}:2"));
    let container = format!("lab-{token}");
    {
        let _planted = Planted::new(task, &[(&deleted, "delete me\n")])?;
        let rootfs = task.rootfs.display().to_string();
        let ran = images(task, &store, &["import", &rootfs, &first]);
        if ran.code != Some(0) {
            return miss(format!("`import ROOTFS {first}` exits 0"), ran.told());
        }
    }
    let script = format!("echo {secret} > /{written}; rm /{deleted}");
    let ran = images(
        task,
        &store,
        &["run", "--name", &container, &first, "--", "/bin/sh", "-c", &script],
    );
    if ran.code != Some(0) {
        return miss(
            format!("`run --name {container} {first} -- sh -c '{script}'` exits 0"),
            ran.told(),
        );
    }
    let ran = images(task, &store, &["commit", &container, &second]);
    if ran.code != Some(0) {
        return miss(format!("`commit {container} {second}` exits 0"), ran.told());
    }
    let expected = format!(
        "{second} has one layer more than {first}, and every blob of it (manifest, config, \
         layers) is stored under its own sha256 in {}/blobs/sha256",
        store.0.display()
    );
    let counted = manifest(&store.0, &first)
        .and_then(|(digest, body)| check_blobs(&store.0, &digest, &body))
        .and_then(|before| {
            let (digest, body) = manifest(&store.0, &second)?;
            Ok((before, check_blobs(&store.0, &digest, &body)?))
        });
    match counted {
        Err(error) => return miss(expected, error),
        Ok((before, after)) if after != before + 1 => {
            return miss(expected, format!("{first} has {before} layers, {second} {after}"))
        }
        Ok(_) => {}
    }
    let check =
        format!("cat /{written}; stat -c %u:%g /{written}; test -e /{deleted} && echo STILL");
    let ran = images(task, &store, &["run", "--rm", &second, "--", "/bin/sh", "-c", &check]);
    let want = format!("{secret}\n0:0");
    if ran.stdout.trim() != want {
        return miss(
            format!(
                "a container of {second} has /{written} ({secret}, owned 0:0 inside) and no \
                 /{deleted} (deleted before the commit)"
            ),
            ran.told(),
        );
    }
    Ok(())
}

/// `load` refuses an archive whose layer's bytes do not match its digest (and tags nothing,
/// stores nothing under that digest), and loads the same archive uncorrupted.
pub fn verify_digest(task: &Task) -> Verdict {
    let token = &task.token;
    let source = Store::new(task, "store");
    let reference = format!("lab-{token}:1");
    let _planted = Planted::new(task, &[(&format!("etc/lab-{token}"), &random_token())])?;
    let rootfs = task.rootfs.display().to_string();
    let ran = images(task, &source, &["import", &rootfs, &reference]);
    if ran.code != Some(0) {
        return miss(format!("`import ROOTFS {reference}` exits 0"), ran.told());
    }
    let good = task.workdir.join(format!("lab-{token}.tar"));
    let bad = task.workdir.join(format!("lab-{token}-bad.tar"));
    let unpacked = Store::new(task, "unpacked");
    let _archives = (Store(good.clone()), Store(bad.clone()));
    let good_arg = good.display().to_string();
    let ran = images(task, &source, &["save", &reference, "-o", &good_arg]);
    if ran.code != Some(0) {
        return miss(format!("`save {reference} -o FILE` exits 0"), ran.told());
    }
    let layer = match corrupt(&good, &unpacked.0, &bad, &reference) {
        Ok(layer) => layer,
        Err(error) => {
            return miss(
                format!("`save {reference}` writes an OCI layout tar with its layer"),
                error,
            )
        }
    };
    // The archive as saved loads: whatever refuses the corrupted one refuses it for its digest.
    let clean = Store::new(task, "clean");
    let ran = images(task, &clean, &["load", "-i", &good_arg]);
    if ran.code != Some(0) {
        return miss(
            format!("`load -i FILE` of what `save {reference}` wrote exits 0"),
            ran.told(),
        );
    }
    let target = Store::new(task, "target");
    let ran = images(task, &target, &["load", "-i", &bad.display().to_string()]);
    let hex = layer.strip_prefix("sha256:").unwrap_or(&layer);
    let stored = target.0.join("blobs/sha256").join(hex).exists();
    let tagged = manifest(&target.0, &reference).is_ok();
    let expected = format!(
        "`load` of the archive with layer {layer} altered (same size, same files) exits 125 \
         naming the layer's digest, stores no blob under it and tags nothing"
    );
    if ran.code != Some(125) || !ran.stderr.contains(&hex[..12]) || stored || tagged {
        let mut happened = ran.told();
        if stored {
            happened.push_str(&format!("; blobs/sha256/{hex} was stored"));
        }
        if tagged {
            happened.push_str(&format!("; {reference} was tagged"));
        }
        return miss(expected, happened);
    }
    Ok(())
}

/// Unpacks the layout tar `good` into `dir`, alters the MTIME field of its first layer's
/// gzip header, and packs it again as `bad`. Returns the layer's digest.
fn corrupt(good: &Path, dir: &Path, bad: &Path, reference: &str) -> Result<String, String> {
    fs::create_dir_all(dir).map_err(|error| error.to_string())?;
    tar(Command::new("tar").arg("-xf").arg(good).arg("-C").arg(dir))?;
    let (_, body) = manifest(dir, reference)?;
    let layer = body["layers"][0]["digest"].as_str().ok_or("the manifest has no layer")?;
    let mut bytes = blob(dir, layer)?;
    // RFC 1952: ID1 ID2 CM FLG MTIME(4) XFL OS; with FHCRC (FLG bit 1) a header CRC would
    // tell the change, and isolab does not write one.
    if bytes.len() < 10 || bytes[..2] != [0x1f, 0x8b] || bytes[3] & 0x02 != 0 {
        return Err(format!("layer {layer} is not a gzip stream without a header CRC"));
    }
    let mut rng = rand::thread_rng();
    let old: [u8; 4] = [bytes[4], bytes[5], bytes[6], bytes[7]];
    let mut new = old;
    while new == old {
        new = rng.gen();
    }
    bytes[4..8].copy_from_slice(&new);
    let hex = layer.trim_start_matches("sha256:");
    // The archive is the binary's: its blob may be a symlink out. It is replaced, never
    // written through (see `plant`).
    let relative = Path::new("blobs/sha256").join(hex);
    plant::remove(dir, &relative).map_err(|error| error.to_string())?;
    plant::plant(dir, &relative, &bytes, 0o644).map_err(|error| error.to_string())?;
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|error| error.to_string())?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // Written by the grader into a file of its own (O_EXCL|O_NOFOLLOW), not by tar through a
    // name the binary may have planted.
    let _ = fs::remove_file(bad);
    let (Some(parent), Some(name)) = (bad.parent(), bad.file_name()) else {
        return Err(format!("{} has no directory", bad.display()));
    };
    let file = plant::create_new(parent, Path::new(name), 0o644)
        .map_err(|error| format!("cannot create {}: {error}", bad.display()))?;
    tar(Command::new("tar").arg("-cf").arg("-").arg("-C").arg(dir).args(&names).stdout(file))?;
    Ok(layer.to_string())
}

fn tar(command: &mut Command) -> Result<(), String> {
    let output = command.output().map_err(|error| format!("cannot run tar: {error}"))?;
    if !output.status.success() {
        return Err(format!("tar failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(())
}
