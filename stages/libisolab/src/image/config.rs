//! What an image's config says a container runs (Env, Entrypoint, Cmd, WorkingDir, User), and
//! its history.
//!
//! An image is its layers plus one JSON document, the config (OCI image-spec, `config.md`):
//! the platform, the layers' uncompressed digests (`rootfs.diff_ids`, in order), one history
//! entry per build step, and the execution defaults a runtime starts from. A build edits the
//! config step by step ([`apply`], [`add_layer`]); a run reads it back ([`launch`],
//! [`resolve_user`]) and lets the command line override it, with docker's rules.

use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::image::{Arch, Config, History, ImageConfiguration, Os, RootFs};

use crate::changes::{is_opaque, is_whiteout};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::dockerfile::{Command, Kind};

/// The PATH a container gets when its image sets none: docker's default (and runc's spec).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What an image's config says a container runs, after the user's overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Entrypoint, then the command line's arguments or else Cmd.
    pub argv: Vec<String>,
    /// The image's Env, the user's `--env` overriding by name, PATH always set.
    pub env: Vec<(String, String)>,
    /// Where the command starts.
    pub workdir: String,
    /// The image's User, still a name or number ([`resolve_user`] makes it ids).
    pub user: Option<String>,
}

/// docker's rules for what a container of an image runs.
///
/// The Entrypoint always runs; arguments given on the command line *replace* Cmd (they do not
/// append to it), so an image with `ENTRYPOINT ["ls"]` and `CMD ["/"]` runs `ls /` by default
/// and `ls /etc` when given `/etc`.
pub fn launch(
    config: &ImageConfiguration,
    args: &[String],
    user_env: &[(String, String)],
    workdir: Option<&str>,
) -> Result<Launch> {
    let image = config.config().clone().unwrap_or_default();
    let mut argv = image.entrypoint().clone().unwrap_or_default();
    match args {
        [] => argv.extend(image.cmd().clone().unwrap_or_default()),
        given => argv.extend_from_slice(given),
    }
    if argv.is_empty() {
        return Err(Error::Invalid(
            "the image has no Cmd or Entrypoint: give a command after --".into(),
        ));
    }
    // The config keeps Env as `NAME=VALUE` strings; the user's values replace the image's by
    // name, in place, so the order stays the image's.
    let mut env: Vec<(String, String)> = (image.env().iter().flatten())
        .map(|entry| match entry.split_once('=') {
            Some((name, value)) => (name.to_string(), value.to_string()),
            None => (entry.clone(), String::new()),
        })
        .collect();
    for (name, value) in user_env {
        match env.iter_mut().find(|(existing, _)| existing == name) {
            Some(slot) => slot.1 = value.clone(),
            None => env.push((name.clone(), value.clone())),
        }
    }
    // Without a PATH, execvp in the container would search only the current directory: a
    // scratch-based image expects the runtime to give the usual one.
    if !env.iter().any(|(name, _)| name == "PATH") {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    let workdir = (workdir.map(str::to_string))
        .or(image.working_dir().clone().filter(|dir| !dir.is_empty()))
        .unwrap_or_else(|| "/".into());
    let user = image.user().clone().filter(|user| !user.is_empty());
    Ok(Launch { argv, env, workdir, user })
}

/// Resolves an image's User (`uid`, `uid:gid`, `name`, `name:group`) into numeric ids, looking
/// names up in the image's own `/etc/passwd` and `/etc/group` — never the host's: the names
/// of a container are the names its image defines. `lowers` are the image's layers, topmost
/// first, as an overlay would stack them.
/// The home directory `/etc/passwd` of the image gives `uid` (its sixth field), if it has an
/// entry for it: a USER's HOME, as docker sets it.
pub fn home_of(uid: u32, lowers: &[PathBuf]) -> Result<Option<String>> {
    let Some((_, text)) = image_file(lowers, "etc/passwd")? else { return Ok(None) };
    Ok(text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let home = fields.get(5).filter(|home| home.starts_with('/'))?;
        (fields.get(2)?.parse::<u32>().ok()? == uid).then(|| home.to_string())
    }))
}

pub fn resolve_user(user: &str, lowers: &[PathBuf]) -> Result<(u32, u32)> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (user, None),
    };
    if user_part.is_empty() || group_part == Some("") {
        return Err(Error::Invalid(format!("user {user:?} is not NAME[:GROUP] or UID[:GID]")));
    }
    // passwd: `name:password:uid:gid:gecos:home:shell`.
    let passwd = image_file(lowers, "etc/passwd")?;
    let entries = |file: &Option<(PathBuf, String)>| -> Vec<(String, u32, u32)> {
        let Some((_, text)) = file else { return Vec::new() };
        (text.lines())
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                let number = |index: usize| fields.get(index)?.parse::<u32>().ok();
                Some((fields[0].to_string(), number(2)?, number(3).unwrap_or(0)))
            })
            .collect()
    };
    let users = entries(&passwd);
    let (uid, primary_gid) = match user_part.parse::<u32>() {
        // A number needs no entry; when it has one, its primary group is the default gid, as
        // docker does (else 0).
        Ok(uid) => {
            let gid = users.iter().find(|entry| entry.1 == uid).map_or(0, |entry| entry.2);
            (uid, gid)
        }
        Err(_) => match users.iter().find(|entry| entry.0 == user_part) {
            Some(entry) => (entry.1, entry.2),
            None => return Err(unknown("user", user_part, &passwd, "etc/passwd")),
        },
    };
    let gid = match group_part {
        None => primary_gid,
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            // group: `name:password:gid:members`, the gid in the third field like passwd's uid.
            Err(_) => {
                let file = image_file(lowers, "etc/group")?;
                let groups: Vec<(String, u32)> = (file.iter())
                    .flat_map(|(_, text)| text.lines())
                    .filter_map(|line| {
                        let fields: Vec<&str> = line.split(':').collect();
                        Some((fields[0].to_string(), fields.get(2)?.parse().ok()?))
                    })
                    .collect();
                match groups.iter().find(|entry| entry.0 == group) {
                    Some(entry) => entry.1,
                    None => return Err(unknown("group", group, &file, "etc/group")),
                }
            }
        },
    };
    Ok((uid, gid))
}

/// A name not found: says which file was read (or that the image has none), and what to do.
fn unknown(what: &str, name: &str, file: &Option<(PathBuf, String)>, relative: &str) -> Error {
    let looked = match file {
        Some((path, _)) => format!("not in the image's /{relative} ({})", path.display()),
        None => format!("not found: the image has no /{relative}"),
    };
    Error::Invalid(format!(
        "{what} {name} is {looked} (use a number, USER UID[:GID], or create the {what} in an earlier RUN)"
    ))
}

/// The file at `relative` as the overlay of `lowers` (topmost first) would show it: the first
/// lower that has it wins. A whiteout (a 0/0 character device) of the file or of a directory
/// on its way deletes it for every lower below; an opaque directory on the way hides the
/// lowers below it too (overlayfs's rules, `Documentation/filesystems/overlayfs.rst`).
/// The largest /etc/passwd or /etc/group read.
const PASSWD_MAX: u64 = 16 << 20;

fn image_file(lowers: &[PathBuf], relative: &str) -> Result<Option<(PathBuf, String)>> {
    for lower in lowers {
        let mut path = lower.clone();
        let mut hidden_below = false;
        let mut found = None;
        let components = Path::new(relative).components().count();
        for (index, component) in Path::new(relative).components().enumerate() {
            path.push(component);
            let Ok(metadata) = fs::symlink_metadata(&path) else { break };
            if is_whiteout(&metadata) {
                return Ok(None);
            }
            // The image's files are read by the host's root here, not inside the container:
            // a symlink (`etc -> /etc`, `passwd -> /dev/zero`) would lead out of the image.
            if metadata.file_type().is_symlink() {
                return Err(Error::Invalid(format!(
                    "/{relative} is reached through the symlink {} in the image's layers, \
                     which isolab does not follow from the host: give USER as numbers \
                     (UID[:GID])",
                    path.display()
                )));
            }
            hidden_below |= metadata.is_dir() && is_opaque(&path)?;
            if index + 1 == components {
                found = Some(metadata);
            }
        }
        if let Some(metadata) = found {
            if !metadata.is_file() || metadata.len() > PASSWD_MAX {
                return Err(Error::Invalid(format!(
                    "{} is not a regular file of at most {PASSWD_MAX} bytes: give USER as \
                     numbers (UID[:GID])",
                    path.display()
                )));
            }
            match fs::read_to_string(&path) {
                Ok(text) => return Ok(Some((path, text))),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(Error::io("read", &path, &error)),
            }
        }
        if hidden_below {
            return Ok(None);
        }
    }
    Ok(None)
}

/// The OCI name of this machine's architecture (Go's GOARCH, which the image-spec uses).
pub fn oci_architecture(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "loongarch64" => "loong64",
        // arm, riscv64, s390x, mips64 … are spelled the same.
        other => other,
    }
}

/// A new config for `FROM scratch`: Linux on this machine's architecture, no layers yet (the
/// rootfs type is always `layers`), no history.
pub fn scratch() -> ImageConfiguration {
    let mut config = ImageConfiguration::default();
    config.set_os(Os::Linux);
    config.set_architecture(Arch::from(oci_architecture(std::env::consts::ARCH)));
    config.set_rootfs(RootFs::default());
    config.set_config(Some(Config::default()));
    config.set_history(None);
    config
}

/// Appends a layer: its `diff_id` (the digest of the *uncompressed* tar) and a history entry
/// for the step that made it.
pub fn add_layer(
    config: &mut ImageConfiguration,
    diff_id: &Digest,
    created: &str,
    created_by: &str,
) {
    config.rootfs_mut().diff_ids_mut().push(diff_id.to_string());
    push_history(config, created, created_by, false);
}

/// Appends a history entry for a step that made no layer (ENV, CMD, …): `empty_layer` tells
/// tools that read the history which entries have a layer, since the two lists differ in
/// length.
pub fn add_history_only(config: &mut ImageConfiguration, created: &str, created_by: &str) {
    push_history(config, created, created_by, true);
}

fn push_history(config: &mut ImageConfiguration, created: &str, created_by: &str, empty: bool) {
    let mut entry = History::default();
    entry.set_created(Some(created.to_string()));
    entry.set_created_by(Some(created_by.to_string()));
    entry.set_empty_layer(Some(empty));
    config.history_mut().get_or_insert_with(Vec::new).push(entry);
}

/// Applies an instruction that changes the config; `false` for kinds that do not (RUN, COPY,
/// FROM, ARG: their effect is a layer, or nothing the image keeps).
pub fn apply(config: &mut ImageConfiguration, kind: &Kind) -> bool {
    let mut image = config.config().clone().unwrap_or_default();
    match kind {
        Kind::Env { pairs } => {
            let mut env = image.env().clone().unwrap_or_default();
            for (name, value) in pairs {
                let entry = format!("{name}={value}");
                match env.iter_mut().find(|existing| existing.split('=').next() == Some(name)) {
                    Some(slot) => *slot = entry,
                    None => env.push(entry),
                }
            }
            image.set_env(Some(env));
        }
        // A relative WORKDIR continues from the previous one ("WORKDIR a" then "WORKDIR b" is
        // /a/b); the reference resolves it lexically, without looking at the filesystem.
        Kind::Workdir { path } => {
            let previous = image.working_dir().clone().unwrap_or_else(|| "/".into());
            image.set_working_dir(Some(join_workdir(&previous, path)));
        }
        Kind::User { user } => {
            image.set_user(Some(user.clone()));
        }
        Kind::Cmd { command } => {
            image.set_cmd(Some(command.argv()));
        }
        // A new ENTRYPOINT resets a Cmd set before it (in this Dockerfile or its base): that
        // Cmd was written as arguments for another entrypoint.
        Kind::Entrypoint { command } => {
            let argv = match command {
                // `ENTRYPOINT []` clears it, as docker does.
                Command::Exec(argv) if argv.is_empty() => None,
                command => Some(command.argv()),
            };
            image.set_entrypoint(argv);
            image.set_cmd(None);
        }
        Kind::Label { pairs } => {
            let mut labels = image.labels().clone().unwrap_or_default();
            labels.extend(pairs.iter().cloned());
            image.set_labels(Some(labels));
        }
        Kind::From { .. } | Kind::Run { .. } | Kind::Copy { .. } | Kind::Arg { .. } => {
            return false;
        }
    }
    config.set_config(Some(image));
    true
}

/// `previous` joined with `path` (absolute `path` replaces it), `.` and `..` resolved.
fn join_workdir(previous: &str, path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let start = if path.starts_with('/') { path.to_string() } else { format!("{previous}/{path}") };
    for part in start.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| word.to_string()).collect()
    }

    /// A config with the given Entrypoint, Cmd, Env and WorkingDir.
    fn image(
        entrypoint: Option<&[&str]>,
        cmd: Option<&[&str]>,
        env: &[&str],
        workdir: Option<&str>,
    ) -> ImageConfiguration {
        let mut config = scratch();
        let mut image = Config::default();
        image.set_entrypoint(entrypoint.map(strings));
        image.set_cmd(cmd.map(strings));
        image.set_env((!env.is_empty()).then(|| strings(env)));
        image.set_working_dir(workdir.map(str::to_string));
        config.set_config(Some(image));
        config
    }

    #[test]
    fn launch_follows_dockers_rules() {
        let ls: &[&str] = &["ls"];
        let root: &[&str] = &["/"];
        type Words = &'static [&'static str];
        // (entrypoint, cmd, command-line args, expected argv)
        let table: &[(Option<Words>, Option<Words>, Words, Words)] = &[
            (None, Some(&["sh"]), &[], &["sh"]),
            (None, Some(&["sh"]), &["echo", "hi"], &["echo", "hi"]),
            (Some(ls), Some(root), &[], &["ls", "/"]),
            // Arguments replace Cmd; they do not append to it.
            (Some(ls), Some(root), &["/etc"], &["ls", "/etc"]),
            (Some(ls), None, &[], &["ls"]),
        ];
        for (entrypoint, cmd, args, expected) in table {
            let config = image(*entrypoint, *cmd, &[], None);
            let launched = launch(&config, &strings(args), &[], None).unwrap();
            assert_eq!(launched.argv, strings(expected), "{entrypoint:?} {cmd:?} {args:?}");
        }
        let error = launch(&image(None, None, &[], None), &[], &[], None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the image has no Cmd or Entrypoint: give a command after --"
        );
    }

    #[test]
    fn launch_env_workdir_and_path() {
        let config = image(None, Some(&["sh"]), &["A=1", "B=2"], Some("/srv"));
        let user_env = [("B".to_string(), "user".to_string()), ("C".into(), "3".into())];
        let launched = launch(&config, &[], &user_env, None).unwrap();
        let env: Vec<_> = launched.env.iter().map(|(n, v)| format!("{n}={v}")).collect();
        assert_eq!(env, [&format!("PATH={DEFAULT_PATH}"), "A=1", "B=user", "C=3"]);
        assert_eq!(launched.workdir, "/srv");
        assert_eq!(launched.user, None);
        assert_eq!(launch(&config, &[], &[], Some("/tmp")).unwrap().workdir, "/tmp");
        let with_path = image(None, Some(&["sh"]), &["PATH=/bin"], None);
        let launched = launch(&with_path, &[], &[], None).unwrap();
        assert_eq!(launched.env, [("PATH".to_string(), "/bin".to_string())]);
        assert_eq!(launched.workdir, "/");
    }

    #[test]
    fn scratch_history_and_layers() {
        let mut config = scratch();
        assert_eq!(config.os(), &Os::Linux);
        assert_eq!(config.rootfs().typ(), "layers");
        assert!(config.rootfs().diff_ids().is_empty());
        assert_eq!(oci_architecture("x86_64"), "amd64");
        assert_eq!(oci_architecture("aarch64"), "arm64");
        assert_eq!(oci_architecture("riscv64"), "riscv64");
        let diff_id = Digest::of(b"layer");
        add_layer(&mut config, &diff_id, "2026-01-01T00:00:00Z", "COPY a /b");
        add_history_only(&mut config, "2026-01-01T00:00:01Z", "ENV A=1");
        assert_eq!(config.rootfs().diff_ids(), &[diff_id.to_string()]);
        let history = config.history().clone().unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].created_by().as_deref(), Some("COPY a /b"));
        assert_eq!(history[0].empty_layer(), Some(false));
        assert_eq!(history[1].empty_layer(), Some(true));
        assert_eq!(history[1].created().as_deref(), Some("2026-01-01T00:00:01Z"));
    }

    #[test]
    fn apply_follows_the_dockerfile_reference() {
        let mut config = scratch();
        let exec = |argv: &[&str]| Command::Exec(strings(argv));
        let pairs = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
        };
        assert!(apply(&mut config, &Kind::Env { pairs: pairs(&[("A", "1"), ("B", "2")]) }));
        assert!(apply(&mut config, &Kind::Env { pairs: pairs(&[("A", "3")]) }));
        assert!(apply(&mut config, &Kind::Workdir { path: "/srv".into() }));
        assert!(apply(&mut config, &Kind::Workdir { path: "app/../web".into() }));
        assert!(apply(&mut config, &Kind::User { user: "nobody".into() }));
        assert!(apply(&mut config, &Kind::Cmd { command: exec(&["sh"]) }));
        assert!(apply(&mut config, &Kind::Label { pairs: pairs(&[("k", "v")]) }));
        let image = config.config().clone().unwrap();
        assert_eq!(image.env().clone().unwrap(), strings(&["A=3", "B=2"]));
        assert_eq!(image.working_dir().as_deref(), Some("/srv/web"));
        assert_eq!(image.user().as_deref(), Some("nobody"));
        assert_eq!(image.cmd().clone().unwrap(), strings(&["sh"]));
        assert_eq!(image.labels().clone().unwrap()["k"], "v");
        // A new ENTRYPOINT resets the Cmd written for the one before; shell form runs via sh.
        let entrypoint = Kind::Entrypoint { command: Command::Shell("exec app".into()) };
        assert!(apply(&mut config, &entrypoint));
        let image = config.config().clone().unwrap();
        assert_eq!(image.entrypoint().clone().unwrap(), strings(&["/bin/sh", "-c", "exec app"]));
        assert_eq!(image.cmd(), &None);
        let before = config.clone();
        assert!(!apply(&mut config, &Kind::Run { command: exec(&["true"]) }));
        assert!(!apply(&mut config, &Kind::Arg { name: "A".into(), default: None }));
        assert_eq!(config, before);
    }

    #[test]
    fn resolve_user_reads_the_topmost_passwd_and_honours_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let (top, middle, bottom) =
            (dir.path().join("top"), dir.path().join("middle"), dir.path().join("bottom"));
        for lower in [&top, &middle, &bottom] {
            fs::create_dir_all(lower.join("etc")).unwrap();
        }
        fs::write(
            middle.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/:/bin/sh\n",
        )
        .unwrap();
        fs::write(middle.join("etc/group"), "root:x:0:\nstaff:x:50:app\n").unwrap();
        fs::write(bottom.join("etc/passwd"), "old:x:7:7::/:/bin/sh\n").unwrap();
        let lowers = [top.clone(), middle.clone(), bottom.clone()];
        assert_eq!(resolve_user("app", &lowers).unwrap(), (1000, 1001));
        assert_eq!(resolve_user("app:staff", &lowers).unwrap(), (1000, 50));
        assert_eq!(resolve_user("1000", &lowers).unwrap(), (1000, 1001));
        assert_eq!(resolve_user("42:43", &lowers).unwrap(), (42, 43));
        assert_eq!(resolve_user("42", &lowers).unwrap(), (42, 0));
        // The middle layer's passwd hides the bottom one.
        let error = resolve_user("old", &lowers).unwrap_err().to_string();
        let shown = middle.join("etc/passwd");
        assert_eq!(error, format!("user old is not in the image's /etc/passwd ({}) (use a number, USER UID[:GID], or create the user in an earlier RUN)", shown.display()));
        let error = resolve_user("app:wheel", &lowers).unwrap_err().to_string();
        assert!(error.starts_with("group wheel is not in the image's /etc/group"), "{error}");

        // The top layer deletes /etc/passwd: a whiteout, the 0/0 character device overlayfs
        // leaves in an upper (`man 2 mknod`, which needs CAP_MKNOD).
        let whiteout = top.join("etc/passwd");
        let made = nix::sys::stat::mknod(
            &whiteout,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        );
        if made.is_err() {
            return crate::skip(
                "resolve_user_reads_the_topmost_passwd_and_honours_whiteouts",
                "mknod of a whiteout needs root",
            );
        }
        let error = resolve_user("app", &lowers).unwrap_err().to_string();
        assert_eq!(error, "user app is not found: the image has no /etc/passwd (use a number, USER UID[:GID], or create the user in an earlier RUN)");
        assert_eq!(resolve_user("5:6", &lowers).unwrap(), (5, 6));
    }
}
