//! The columns of the matrix, as data: the host first, then one line per stage.
//!
//! A column says how to start the probe: directly on the host, or through a stage binary (found
//! next to `isolab`'s own executable) with the arguments that stage needs to run a command in
//! its sandbox, after what that stage needs first (stage 5's image, imported from the rootfs,
//! or pulled from a registry with `--image`).
//! When a chapter adds a stage, it adds one [`Column`] here; columns whose binary has not been
//! built yet are left out, so the matrix grows with the course.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// What every column's arguments may refer to.
#[derive(Debug)]
pub struct Setup<'a> {
    /// The busybox rootfs built for this run (with the probe at [`PROBE_INSIDE`]).
    pub rootfs: &'a Path,
    /// The run's working directory on the host, which holds the rootfs and the markers.
    pub workdir: &'a Path,
    /// `--image`: stage 5 pulls this image instead of importing the rootfs.
    pub image: Option<&'a PulledImage>,
}

/// An image stage 5 runs the probe from, pulled from a registry (`isolab compare --image`).
/// It must hold the probe at [`PROBE_INSIDE`], as an image pushed from a rootfs that
/// `rootfs-builder busybox` made does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// `HOST[:PORT]/REPOSITORY[:TAG]` or `…@sha256:DIGEST`, as `stage5-images pull` takes it.
    pub reference: String,
    /// `--insecure`: plain HTTP to a registry that is not on this machine.
    pub insecure: bool,
    /// `--creds USER:PASS`, passed on to the pull (and never shown: see [`redacted`]).
    pub creds: Option<String>,
}

/// One column: a name, and how to run the probe there.
#[derive(Debug)]
pub struct Column {
    /// The column's id in JSON (`stage1-nobody`).
    pub id: &'static str,
    /// Its heading in tables (`stage1 (as nobody)`).
    pub title: &'static str,
    /// `None`: the probe runs on the host itself. `Some`: under this stage binary.
    pub runtime: Option<Runtime>,
}

/// A stage binary and the arguments that make it run a command in its sandbox.
#[derive(Debug)]
pub struct Runtime {
    /// The binary's name, next to `isolab`'s own executable.
    pub binary: &'static str,
    /// The arguments of a first run of the binary, which must succeed before the probe runs:
    /// what the sandbox is made from, when it is not the rootfs itself.
    pub prepare: Option<fn(&Setup) -> Vec<OsString>>,
    /// The arguments between the binary and the probe's command line.
    pub args: fn(&Setup) -> Vec<OsString>,
}

/// Where `rootfs-builder` puts the probe inside every rootfs it builds.
pub const PROBE_INSIDE: &str = "/isolab/probe";

/// The host's probe binary, next to `isolab`'s own executable.
pub const PROBE_ON_HOST: &str = "isolab-probe";

// ANCHOR: columns
/// Every column, in matrix order. Stage N's chapter adds its line at the end.
pub const COLUMNS: &[Column] = &[
    Column { id: "host", title: "host", runtime: None },
    Column {
        id: "stage1",
        title: "stage1",
        runtime: Some(Runtime { binary: "stage1-chroot", prepare: None, args: stage1 }),
    },
    Column {
        id: "stage1-nobody",
        title: "stage1 (as nobody)",
        runtime: Some(Runtime { binary: "stage1-chroot", prepare: None, args: stage1_as_nobody }),
    },
    Column {
        id: "stage2",
        title: "stage2",
        runtime: Some(Runtime { binary: "stage2-namespaces", prepare: None, args: stage2 }),
    },
    Column {
        id: "stage2-no-userns",
        title: "stage2 (no user ns)",
        runtime: Some(Runtime {
            binary: "stage2-namespaces",
            prepare: None,
            args: stage2_without_user_namespace,
        }),
    },
    Column {
        id: "stage3",
        title: "stage3",
        runtime: Some(Runtime { binary: "stage3-cgroups", prepare: None, args: stage3 }),
    },
    Column {
        id: "stage4",
        title: "stage4",
        runtime: Some(Runtime { binary: "stage4-overlay", prepare: None, args: stage4 }),
    },
    Column {
        id: "stage5",
        title: "stage5",
        runtime: Some(Runtime {
            binary: "stage5-images",
            prepare: Some(stage5_prepare),
            args: stage5,
        }),
    },
];

fn stage1(setup: &Setup) -> Vec<OsString> {
    vec!["run".into(), "--rootfs".into(), setup.rootfs.into(), "--".into()]
}

fn stage1_as_nobody(setup: &Setup) -> Vec<OsString> {
    // 65534 is `nobody` on Debian and most distributions: a uid that owns nothing.
    let rootfs = setup.rootfs.into();
    vec![
        "run".into(),
        "--rootfs".into(),
        rootfs,
        "--user".into(),
        "65534:65534".into(),
        "--".into(),
    ]
}

fn stage2(setup: &Setup) -> Vec<OsString> {
    // Every namespace the kernel has, the user namespace included: root inside is an
    // unprivileged uid outside.
    vec!["run".into(), "--rootfs".into(), setup.rootfs.into(), "--".into()]
}

fn stage2_without_user_namespace(setup: &Setup) -> Vec<OsString> {
    // The same without a user namespace: root inside is the host's root again, which shows
    // what the user namespace alone was holding back (identity, writes to the base rootfs).
    vec![
        "run".into(),
        "--rootfs".into(),
        setup.rootfs.into(),
        "--ns".into(),
        "mnt,uts,ipc,pid,net,cgroup".into(),
        "--".into(),
    ]
}

fn stage3(setup: &Setup) -> Vec<OsString> {
    // Stage 2's namespaces, and limits the probe's memory hog, fork bomb and busy loop meet
    // well below their caps (256 MiB, 64 processes, one CPU).
    let limits = ["--memory", "64M", "--pids", "32", "--cpus", "0.5"];
    let mut args: Vec<OsString> = vec!["run".into(), "--rootfs".into(), setup.rootfs.into()];
    args.extend(limits.iter().map(OsString::from));
    args.push("--".into());
    args
}

fn stage4(setup: &Setup) -> Vec<OsString> {
    // Stage 3's limits, on an overlay: a throw-away container (--rm) in a store inside this
    // run's directory, so the probe's write lands in the container's upper layer.
    let mut args = stage3(setup);
    let rest = args.split_off(1);
    args.extend(["--rm".into(), "--root".into(), setup.workdir.join("store").into()]);
    args.extend(rest);
    args
}

/// The image stage 5 runs the probe from, in a store of its own in this run's directory.
const STAGE5_IMAGE: &str = "compare:probe";

fn stage5_store(setup: &Setup) -> PathBuf {
    setup.workdir.join("images")
}

fn stage5_prepare(setup: &Setup) -> Vec<OsString> {
    let store = stage5_store(setup).into();
    let Some(image) = setup.image else {
        // The rootfs becomes a one-layer image: a tar stored once by its digest, then
        // unpacked once into the store, where the column's container stacks it as its lower.
        return vec![
            "--root".into(),
            store,
            "import".into(),
            setup.rootfs.into(),
            STAGE5_IMAGE.into(),
        ];
    };
    // --image: the image comes from a registry instead, into the same store of this run, each
    // blob checked against its digest on the way in (the registry chapter's `pull`).
    let mut args: Vec<OsString> = vec!["--root".into(), store, "pull".into()];
    if image.insecure {
        args.push("--insecure".into());
    }
    if let Some(creds) = &image.creds {
        args.extend(["--creds".into(), creds.into()]);
    }
    args.push(image.reference.as_str().into());
    args
}

/// The word `run` finds the column's image by: the pulled reference as written (the store
/// tags it under that name), or its digest when it names one (a pull by digest is that
/// manifest, whatever a tag says); `compare:probe` when the rootfs was imported.
fn stage5_image(setup: &Setup) -> OsString {
    let Some(image) = setup.image else { return STAGE5_IMAGE.into() };
    match image.reference.split_once('@') {
        Some((_, digest)) => digest.into(),
        None => image.reference.as_str().into(),
    }
}

fn stage5(setup: &Setup) -> Vec<OsString> {
    // Stage 4's throw-away container with stage 3's limits, over the image instead of the
    // rootfs directory.
    let limits = ["--memory", "64M", "--pids", "32", "--cpus", "0.5"];
    let mut args: Vec<OsString> =
        vec!["--root".into(), stage5_store(setup).into(), "run".into(), "--rm".into()];
    args.extend(limits.iter().map(OsString::from));
    args.extend([stage5_image(setup), "--".into()]);
    args
}
// ANCHOR_END: columns

/// `args` as they may be shown (in `--json`, in an error): the value after `--creds` hidden.
pub fn redacted(args: &[OsString]) -> Vec<OsString> {
    let mut shown = Vec::with_capacity(args.len());
    let mut secret = false;
    for arg in args {
        shown.push(if secret { "<hidden>".into() } else { arg.clone() });
        secret = arg == "--creds";
    }
    shown
}

impl Column {
    /// The program and arguments of what must run before the probe in this column; `None`
    /// when nothing must.
    pub fn prepare(&self, bin_dir: &Path, setup: &Setup) -> Option<(PathBuf, Vec<OsString>)> {
        let runtime = self.runtime.as_ref()?;
        Some((bin_dir.join(runtime.binary), (runtime.prepare?)(setup)))
    }

    /// The program and arguments that run the probe in this column, with `probe_flags`
    /// (the markers) at the end; `None` when the stage binary is not built.
    pub fn command(
        &self,
        bin_dir: &Path,
        setup: &Setup,
        probe_flags: &[OsString],
    ) -> Option<(PathBuf, Vec<OsString>)> {
        let (program, mut args) = match &self.runtime {
            None => {
                let scratch: Vec<OsString> =
                    vec!["--on-host".into(), "--scratch".into(), setup.workdir.into()];
                (bin_dir.join(PROBE_ON_HOST), scratch)
            }
            Some(runtime) => {
                let mut args = (runtime.args)(setup);
                args.push(PROBE_INSIDE.into());
                (bin_dir.join(runtime.binary), args)
            }
        };
        if !program.is_file() {
            return None;
        }
        args.extend(probe_flags.iter().cloned());
        Some((program, args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_host_comes_first() {
        assert_eq!(COLUMNS[0].id, "host");
        let mut ids: Vec<_> = COLUMNS.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), COLUMNS.len());
    }

    #[test]
    fn stage_columns_put_the_probe_after_the_runtime_args() {
        let bin = tempfile::tempdir().unwrap();
        std::fs::write(bin.path().join("stage1-chroot"), "").unwrap();
        let setup = Setup { rootfs: Path::new("/w/rootfs"), workdir: Path::new("/w"), image: None };
        let flags = vec![OsString::from("--token"), OsString::from("t")];
        let (program, args) = COLUMNS[2].command(bin.path(), &setup, &flags).unwrap();
        assert_eq!(program, bin.path().join("stage1-chroot"));
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "run",
                "--rootfs",
                "/w/rootfs",
                "--user",
                "65534:65534",
                "--",
                "/isolab/probe",
                "--token",
                "t"
            ]
        );
        // The host's probe is not built in this fake bin dir: the column is left out.
        assert!(COLUMNS[0].command(bin.path(), &setup, &flags).is_none());
    }

    #[test]
    fn stage5_imports_the_rootfs_then_runs_the_probe_from_the_image() {
        let bin = tempfile::tempdir().unwrap();
        let setup = Setup { rootfs: Path::new("/w/rootfs"), workdir: Path::new("/w"), image: None };
        let stage5 = COLUMNS.iter().find(|column| column.id == "stage5").unwrap();
        let strings = |args: Vec<OsString>| -> Vec<String> {
            args.into_iter().map(|arg| arg.into_string().unwrap()).collect()
        };
        let (program, first) = stage5.prepare(bin.path(), &setup).unwrap();
        assert_eq!(program, bin.path().join("stage5-images"));
        assert_eq!(strings(first), ["--root", "/w/images", "import", "/w/rootfs", "compare:probe"]);
        std::fs::write(bin.path().join("stage5-images"), "").unwrap();
        let (_, args) = stage5.command(bin.path(), &setup, &[]).unwrap();
        let args = strings(args);
        assert_eq!(args[..4], ["--root", "/w/images", "run", "--rm"]);
        assert_eq!(args[args.len() - 3..], ["compare:probe", "--", "/isolab/probe"]);
        // Only stage 5 needs a first run.
        assert!(
            COLUMNS.iter().filter(|column| column.prepare(bin.path(), &setup).is_some()).count()
                == 1
        );
    }

    #[test]
    fn stage5_pulls_the_image_of_compare_image_and_runs_the_probe_from_it() {
        let bin = tempfile::tempdir().unwrap();
        std::fs::write(bin.path().join("stage5-images"), "").unwrap();
        let stage5 = COLUMNS.iter().find(|column| column.id == "stage5").unwrap();
        let strings = |args: Vec<OsString>| -> Vec<String> {
            args.into_iter().map(|arg| arg.into_string().unwrap()).collect()
        };
        let tagged = PulledImage {
            reference: "127.0.0.1:5000/team/probe:1".into(),
            insecure: false,
            creds: None,
        };
        let setup = Setup {
            rootfs: Path::new("/w/rootfs"),
            workdir: Path::new("/w"),
            image: Some(&tagged),
        };
        let (_, first) = stage5.prepare(bin.path(), &setup).unwrap();
        assert_eq!(strings(first), ["--root", "/w/images", "pull", "127.0.0.1:5000/team/probe:1"]);
        let (_, args) = stage5.command(bin.path(), &setup, &[]).unwrap();
        let args = strings(args);
        assert_eq!(args[..4], ["--root", "/w/images", "run", "--rm"]);
        assert_eq!(
            args[args.len() - 3..],
            ["127.0.0.1:5000/team/probe:1", "--", "/isolab/probe"],
            "run by the name the pull tagged"
        );

        // Insecure, with credentials, by digest: the flags go to the pull, the run takes the
        // digest.
        let digest = format!("sha256:{}", "ab".repeat(32));
        let pinned = PulledImage {
            reference: format!("reg.example:5000/team/probe@{digest}"),
            insecure: true,
            creds: Some("ann:s3cret".into()),
        };
        let setup = Setup {
            rootfs: Path::new("/w/rootfs"),
            workdir: Path::new("/w"),
            image: Some(&pinned),
        };
        let (_, first) = stage5.prepare(bin.path(), &setup).unwrap();
        let first = strings(first);
        assert_eq!(
            first,
            [
                "--root",
                "/w/images",
                "pull",
                "--insecure",
                "--creds",
                "ann:s3cret",
                &format!("reg.example:5000/team/probe@{digest}"),
            ]
        );
        let (_, args) = stage5.command(bin.path(), &setup, &[]).unwrap();
        let args = strings(args);
        assert_eq!(args[args.len() - 3..], [digest.as_str(), "--", "/isolab/probe"]);
        // What is shown of the pull never holds the password.
        let shown = strings(redacted(&first.iter().map(OsString::from).collect::<Vec<_>>()));
        assert_eq!(shown[4..6], ["--creds", "<hidden>"]);
        assert!(!shown.iter().any(|arg| arg.contains("s3cret")));

        // The other columns do not change with --image.
        let plain = Setup { rootfs: Path::new("/w/rootfs"), workdir: Path::new("/w"), image: None };
        for column in COLUMNS.iter().filter(|column| column.id != "stage5") {
            let with = column.command(bin.path(), &setup, &[]).map(|(_, args)| args);
            let without = column.command(bin.path(), &plain, &[]).map(|(_, args)| args);
            assert_eq!(with, without, "{}", column.id);
        }
    }
}
