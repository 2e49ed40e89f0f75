//! The store's unit tests: every rule of the module's documentation, without root.

use std::os::unix::fs::MetadataExt;

use super::*;

fn new(name: Option<&str>, base: &Path) -> New {
    New {
        name: name.map(String::from),
        storage: Storage::Overlay,
        lowers: vec![base.to_path_buf()],
        image: None,
        userxattr: false,
        owner: None,
        remove: false,
        argv: vec!["run".into()],
        command: vec!["/bin/true".into()],
    }
}

fn scratch() -> (tempfile::TempDir, PathBuf, Store) {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    fs::create_dir(&base).unwrap();
    let store = Store::at(&tmp.path().join("store")).unwrap();
    (tmp, base, store)
}

fn said(cleaned: &[Cleaned]) -> Vec<String> {
    cleaned.iter().map(Cleaned::to_string).collect()
}

#[test]
fn create_list_find_remove() {
    let (_tmp, base, store) = scratch();
    let container = store.prepare(new(Some("web"), &base)).unwrap();
    assert!(!container.dir.exists(), "prepare writes nothing");
    let running = store.create(&container).unwrap();
    for dir in ["upper", "work"] {
        assert!(container.dir.join(dir).is_dir(), "{dir}");
    }
    // Its root's mount point is the store's, shared: each container mounts on it in its own
    // mount namespace.
    assert!(!container.dir.join("merged").exists());
    assert_eq!(container.rootfs(), store.root().join("mnt/root"));
    assert!(container.rootfs().is_dir());
    let mode = fs::metadata(&container.dir).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o700, "no other user may reach the upper");
    // The name is taken; the lock is held.
    let again = store.prepare(new(Some("web"), &base)).unwrap();
    let error = store.create(&again).err().unwrap().to_string();
    assert!(error.contains("'web' is already in use"), "{error}");
    assert!(!again.dir.exists(), "a refused create leaves nothing");
    assert_eq!(store.resolve("web").unwrap(), container.config.id, "the name stays web's");
    let error = store.remove("web", false).unwrap_err().to_string();
    assert!(error.contains("is running"), "{error}");
    running.exited(3).unwrap();

    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    let Listed::Found(found, state) = &listed[0] else { panic!("{listed:?}") };
    assert_eq!((found.config.name.as_str(), state.exit_code), ("web", Some(3)));
    assert_eq!(store.find(&found.config.id).unwrap().config.name, "web");
    assert_eq!(store.find(&found.config.id[..4]).unwrap().config.name, "web");
    // A name that is the start of that id is refused.
    let prefix = store.prepare(new(Some(&found.config.id[..5]), &base)).unwrap();
    let error = store.create(&prefix).err().unwrap().to_string();
    assert!(error.contains("is the start of the id"), "{error}");
    let removed = store.remove("web", false).unwrap();
    assert!(!removed.killed);
    assert!(!container.dir.exists());
    assert!(store.find("web").unwrap_err().to_string().contains("no container 'web'"));
    assert!(journal::ids(&store.active_dir()).unwrap().is_empty());
    assert!(names::all(&store.names_dir()).unwrap().is_empty());
    // The name is free again.
    let third = store.prepare(new(Some("web"), &base)).unwrap();
    store.create(&third).unwrap().exited(0).unwrap();
}

#[test]
fn ps_tells_the_truth_without_gc_and_gc_fixes_it() {
    let (_tmp, base, store) = scratch();
    let kept = store.prepare(new(Some("kept"), &base)).unwrap();
    // A runtime that "dies": its lock goes, its state still says running.
    store.create(&kept).unwrap().die();
    let gone = store.prepare(New { remove: true, ..new(Some("gone"), &base) }).unwrap();
    store.create(&gone).unwrap().die();
    fs::write(kept.dir.join("state.json.tmp-1"), "{").unwrap();

    let listed = store.list().unwrap();
    assert!(listed.iter().all(|entry| matches!(entry,
        Listed::Found(_, state) if state.runtime_died && state.status == Status::Exited)));
    assert_eq!(kept.state().unwrap().status, Status::Running, "list writes nothing");

    let cleaned = store.gc_journal().unwrap();
    assert_eq!(cleaned.len(), 3, "{:#?}", said(&cleaned));
    assert!(!gone.dir.exists());
    let state = kept.state().unwrap();
    assert_eq!((state.status, state.exit_code), (Status::Exited, None));
    assert!(store.gc().unwrap().is_empty(), "nothing left to clean");
}

// Regression: a `--rm` container whose runtime died, and whose journal entry an older
// version's runtime had cleared, was started again: its volatile upper failed to mount with a
// bare EINVAL, and it stayed "exited 125" for good.
#[test]
fn a_left_over_rm_container_is_not_started_again() {
    let (_tmp, base, store) = scratch();
    let gone = store.prepare(New { remove: true, ..new(Some("gone"), &base) }).unwrap();
    store.create(&gone).unwrap().die();
    journal::clear(&store.active_dir(), &gone.config.id).unwrap();
    let error = gone.start().expect_err("started").to_string();
    assert!(error.contains("was run with --rm"), "{error}");
    assert!(error.contains("`rm gone` removes it"), "{error}");
    assert!(store.remove("gone", false).is_ok());
}

#[test]
fn gc_never_removes_what_it_did_not_make() {
    let (_tmp, base, store) = scratch();
    let container = store.prepare(new(Some("real"), &base)).unwrap();
    store.create(&container).unwrap().exited(0).unwrap();
    // A user's directory in the store, and a real container that lost its config.
    let foreign = store.containers_dir().join("web-app");
    fs::create_dir(&foreign).unwrap();
    fs::write(foreign.join("Dockerfile"), "important").unwrap();
    fs::write(container.dir.join("upper/work.txt"), "mine").unwrap();
    fs::remove_file(container.dir.join("config.json")).unwrap();

    for _ in 0..2 {
        let cleaned = store.gc().unwrap();
        assert!(cleaned.iter().all(Cleaned::is_left_alone), "{:#?}", said(&cleaned));
        assert_eq!(cleaned.len(), 2, "{:#?}", said(&cleaned));
        assert!(said(&cleaned).iter().any(|line| line.contains("rm --force")));
    }
    assert_eq!(fs::read_to_string(foreign.join("Dockerfile")).unwrap(), "important");
    assert_eq!(fs::read_to_string(container.dir.join("upper/work.txt")).unwrap(), "mine");
    // Another container's create (whose gc reads the journal) does not touch them either.
    let other = store.prepare(new(Some("other"), &base)).unwrap();
    store.create(&other).unwrap().exited(0).unwrap();
    assert!(container.dir.join("upper/work.txt").exists() && foreign.exists());
    // Only an explicit rm --force does, by id.
    let error = store.remove(&container.config.id, false).unwrap_err().to_string();
    assert!(error.contains("config.json is missing"), "{error}");
    assert!(store.remove(&container.config.id, true).unwrap().broken);
    assert!(!container.dir.exists());
    assert!(store.resolve("real").unwrap_err().to_string().contains("no container"));
}

#[test]
fn a_create_killed_half_way_is_removed_because_the_journal_says_so() {
    let (_tmp, base, store) = scratch();
    let container = store.prepare(new(Some("half"), &base)).unwrap();
    // As if the runtime died after making the directory: the journal says create.
    store.make_root().unwrap();
    journal::write(&store.active_dir(), &container.config.id, Intent::Create).unwrap();
    container.make_dir().unwrap();
    container.make_contents().unwrap();
    names::claim(&store.names_dir(), "half", &container.config.id, |_| true).unwrap();
    let cleaned = store.gc_journal().unwrap();
    assert_eq!(
        said(&cleaned),
        [format!(
            "container {} was being created by a runtime that died: removed",
            container.config.id
        )]
    );
    assert!(!container.dir.exists());
    assert!(names::lookup(&store.names_dir(), "half").is_none());
}

#[test]
fn a_corrupt_state_breaks_one_container_only() {
    let (_tmp, base, store) = scratch();
    for name in ["a-one", "b-two"] {
        let container = store.prepare(new(Some(name), &base)).unwrap();
        store.create(&container).unwrap().exited(0).unwrap();
    }
    let broken = store.find("a-one").unwrap();
    fs::write(broken.dir.join("state.json"), "{\"status\": \"runn").unwrap();
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed
        .iter()
        .any(|entry| matches!(entry, Listed::Found(c, _) if c.config.name == "b-two")));
    let error = store.remove("a-one", false).unwrap_err().to_string();
    assert!(error.contains("state.json is corrupt"), "{error}");
    assert!(store.remove("a-one", true).unwrap().broken);
    assert!(store.gc().unwrap().is_empty());
}

#[test]
fn force_removes_whatever_is_there() {
    let (_tmp, base, store) = scratch();
    let container = store.prepare(new(Some("odd"), &base)).unwrap();
    store.create(&container).unwrap().exited(0).unwrap();
    fs::write(container.dir.join("config.json"), "garbage").unwrap();
    fs::remove_file(container.dir.join("lock")).unwrap();
    fs::create_dir(container.dir.join("lock")).unwrap();
    // By name (the index still knows it), though the config cannot be read.
    let removed = store.remove("odd", true).unwrap();
    assert!(removed.broken, "{removed}");
    assert!(!container.dir.exists());
    assert!(names::lookup(&store.names_dir(), "odd").is_none());
}

#[test]
fn start_refuses_when_the_upper_is_gone() {
    let (_tmp, base, store) = scratch();
    let container = store.prepare(new(Some("lost"), &base)).unwrap();
    store.create(&container).unwrap().exited(0).unwrap();
    fs::remove_dir_all(container.dir.join("upper")).unwrap();
    let error = container.start().unwrap_err().to_string();
    assert!(error.contains("upper directory") && error.contains("is gone"), "{error}");
}

#[test]
fn an_old_store_without_an_index_is_indexed() {
    let (_tmp, base, store) = scratch();
    let container = store.prepare(new(Some("old"), &base)).unwrap();
    store.create(&container).unwrap().exited(0).unwrap();
    fs::remove_dir_all(store.names_dir()).unwrap();
    fs::create_dir(store.names_dir()).unwrap();
    let same = store.prepare(new(Some("old"), &base)).unwrap();
    let error = store.create(&same).err().unwrap().to_string();
    assert!(error.contains("already in use"), "{error}");
    assert_eq!(store.resolve("old").unwrap(), container.config.id);
}

// Regression: a symlink at containers/<id> (with a journal entry, or removed with --force)
// made gc and rm empty the directory it pointed to, outside the store.
#[test]
fn a_symlink_in_the_store_is_never_followed() {
    let (tmp, base, store) = scratch();
    let container = store.prepare(new(Some("real-one"), &base)).unwrap();
    store.create(&container).unwrap().exited(0).unwrap();
    let victim = tmp.path().join("victim");
    fs::create_dir_all(victim.join("sub")).unwrap();
    fs::write(victim.join("keep"), "x").unwrap();
    let link = store.containers_dir().join("0123456789ab");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    journal::write(&store.active_dir(), "0123456789ab", Intent::Create).unwrap();
    let cleaned = store.gc().unwrap();
    assert!(victim.join("keep").exists() && victim.join("sub").exists(), "{cleaned:?}");
    assert!(said(&cleaned).iter().any(|line| line.contains("not a directory")), "{cleaned:?}");
    let error = store.remove("0123456789ab", false).unwrap_err().to_string();
    assert!(error.contains("rm --force"), "{error}");
    store.remove("0123456789ab", true).unwrap();
    assert!(!link.exists() && victim.join("keep").exists() && victim.join("sub").exists());
    assert!(store.find("real-one").is_ok());
}

// Regression: a `lock` that was a symlink made root create its target; one that was a
// FIFO made `ps` and `gc` hang.
#[test]
fn a_lock_that_is_not_a_file_is_refused_not_followed() {
    let (tmp, base, store) = scratch();
    let container = store.prepare(new(Some("locked"), &base)).unwrap();
    store.create(&container).unwrap().exited(0).unwrap();
    let target = tmp.path().join("created-by-root");
    fs::remove_file(container.dir.join("lock")).unwrap();
    std::os::unix::fs::symlink(&target, container.dir.join("lock")).unwrap();
    let error = store.remove("locked", false).unwrap_err().to_string();
    assert!(error.contains("not a file isolab made"), "{error}");
    assert!(!target.exists(), "the lock's symlink was followed");
    fs::remove_file(container.dir.join("lock")).unwrap();
    nix::unistd::mkfifo(&container.dir.join("lock"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (done, wait) = std::sync::mpsc::channel();
    let looking = store.clone();
    std::thread::spawn(move || {
        let _ = looking.list();
        let _ = looking.gc();
        let _ = done.send(());
    });
    assert!(wait.recv_timeout(Duration::from_secs(5)).is_ok(), "ps/gc hang on a FIFO lock");
    assert!(store.remove("locked", true).unwrap().broken);
    assert!(!container.dir.exists());
}

// Regression: one junk entry in the journal made every rm and gc fail.
#[test]
fn junk_in_the_journal_blocks_nothing() {
    let (_tmp, base, store) = scratch();
    let container = store.prepare(new(Some("fine"), &base)).unwrap();
    store.create(&container).unwrap().exited(0).unwrap();
    fs::create_dir(store.active_dir().join("abcd")).unwrap();
    fs::create_dir(store.active_dir().join("aaaaaaaaaaaa")).unwrap();
    fs::write(store.active_dir().join("abc"), "junk").unwrap();
    fs::write(store.active_dir().join("bbbbbbbbbbbb"), "junk").unwrap();
    let cleaned = store.gc_journal().unwrap();
    assert_eq!(cleaned.len(), 1, "{:?}", said(&cleaned)); // the unreadable entry, reported
    assert!(cleaned[0].is_left_alone());
    store.remove("fine", false).unwrap();
}

// Regression: gc removed an empty directory of the store silently; and `rm --force` could
// not remove what gc told it to, by the name gc printed.
#[test]
fn empty_foreign_directories_are_reported_and_removable_by_name() {
    let (_tmp, base, store) = scratch();
    let container = store.prepare(new(Some("x-one"), &base)).unwrap();
    store.create(&container).unwrap().exited(0).unwrap();
    let mine = store.containers_dir().join("mydata");
    fs::create_dir(&mine).unwrap();
    let cleaned = store.gc().unwrap();
    assert!(mine.exists(), "gc removed a directory it did not make");
    let line = said(&cleaned).join("\n");
    assert!(line.contains("mydata") && line.contains("rm --force mydata"), "{line}");
    store.remove("mydata", true).unwrap();
    assert!(!mine.exists());
}

#[test]
fn the_last_state_is_written_on_a_full_disk_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("state.json");
    fs::write(&path, vec![b' '; 300]).unwrap();
    let state = State { status: Status::Exited, exit_code: Some(0), ..State::running() };
    files::write_json_even_if_full(&path, &state).unwrap();
    let back: State = files::read_json(&path).unwrap();
    assert_eq!(back.exit_code, Some(0));
}

// Regression: a directory, a FIFO or a symlink in the journal under a real container's id
// made the whole gc fail, hang, or read through the link.
#[test]
fn junk_under_a_real_id_in_the_journal_blocks_no_gc() {
    let (_tmp, base, store) = scratch();
    let mut ids = Vec::new();
    for name in ["j-one", "j-two", "j-three"] {
        let container = store.prepare(new(Some(name), &base)).unwrap();
        store.create(&container).unwrap().exited(0).unwrap();
        ids.push(container.config.id);
    }
    fs::create_dir(store.active_dir().join(&ids[0])).unwrap();
    nix::unistd::mkfifo(&store.active_dir().join(&ids[1]), nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::os::unix::fs::symlink("/dev/zero", store.active_dir().join(&ids[2])).unwrap();
    let (done, wait) = std::sync::mpsc::channel();
    let looking = store.clone();
    std::thread::spawn(move || {
        let _ = done.send(looking.gc().map(|cleaned| cleaned.len()));
    });
    let result = wait.recv_timeout(Duration::from_secs(5)).expect("gc hangs on a FIFO entry");
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(store.list().unwrap().len(), 3);
}

// Regression: something in names/ that is not a link made run and gc fail with a bare
// readlink error.
#[test]
fn a_non_link_in_the_index_is_reported() {
    let (_tmp, base, store) = scratch();
    let container = store.prepare(new(Some("keep-me"), &base)).unwrap();
    store.create(&container).unwrap().exited(0).unwrap();
    fs::create_dir(store.names_dir().join("taken")).unwrap();
    let other = store.prepare(new(Some("taken"), &base)).unwrap();
    let error = store.create(&other).err().unwrap().to_string();
    assert!(error.contains("not a link isolab made"), "{error}");
    fs::remove_file(store.names_dir().join("keep-me")).unwrap();
    fs::create_dir(store.names_dir().join("keep-me")).unwrap();
    let cleaned = store.gc().unwrap();
    assert!(said(&cleaned).iter().any(|line| line.contains("cannot hold keep-me")), "{cleaned:?}");
}

#[test]
fn the_mount_points_are_the_stores_and_a_link_there_is_refused() {
    let (tmp, base, store) = scratch();
    let one = store.create(&store.prepare(new(Some("one"), &base)).unwrap()).unwrap();
    let two = store.create(&store.prepare(new(Some("two"), &base)).unwrap()).unwrap();
    assert_eq!(one.container.rootfs(), two.container.rootfs(), "one mount point for both");
    let mode = fs::metadata(store.root().join("mnt")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o711, "root of a user namespace passes through, and lists nothing");
    one.exited(0).unwrap();
    two.exited(0).unwrap();
    // A link where a mount point should be would take the mount elsewhere.
    let point = store.root().join("mnt/root");
    fs::remove_dir(&point).unwrap();
    std::os::unix::fs::symlink(tmp.path(), &point).unwrap();
    let error = store.create(&store.prepare(new(Some("three"), &base)).unwrap()).err().unwrap();
    assert!(error.to_string().contains("follows no link"), "{error}");
    // And `mnt` itself, the store's own directory, is checked like the others.
    fs::remove_file(&point).unwrap();
    let mnt = store.root().join("mnt");
    fs::remove_dir(&mnt).unwrap();
    std::os::unix::fs::symlink(tmp.path(), &mnt).unwrap();
    let error = store.check_owner().unwrap_err().to_string();
    assert!(error.contains("follows no link"), "{error}");
}

#[test]
fn a_mount_point_others_may_write_or_a_base_among_the_mount_points_is_refused() {
    let (_tmp, base, store) = scratch();
    let one = store.create(&store.prepare(new(Some("one"), &base)).unwrap()).unwrap();
    let dir = one.container.dir.clone();
    one.exited(0).unwrap();
    // A container of the older layout: its own empty mount points go when it starts again.
    for old in ["merged", "lower0"] {
        fs::create_dir(dir.join(old)).unwrap();
    }
    let again = store.find("one").unwrap().start().unwrap();
    assert!(!dir.join("merged").exists() && !dir.join("lower0").exists());
    again.exited(0).unwrap();
    let point = store.root().join("mnt/root");
    fs::set_permissions(&point, fs::Permissions::from_mode(0o777)).unwrap();
    let error = store.create(&store.prepare(new(Some("two"), &base)).unwrap()).err().unwrap();
    assert!(error.to_string().contains("chmod go-w"), "{error}");
    fs::set_permissions(&point, fs::Permissions::from_mode(0o755)).unwrap();
    let mnt = store.root().join("mnt");
    fs::set_permissions(&mnt, fs::Permissions::from_mode(0o777)).unwrap();
    let error = store.check_owner().unwrap_err().to_string();
    assert!(error.contains("the store's own directory") && error.contains("chmod go-w"), "{error}");
    fs::set_permissions(&mnt, fs::Permissions::from_mode(0o711)).unwrap();
    // The root may be the user's own group-writable mkdir (a umask of 002), not writable by
    // all: then anyone could put their own `mnt/` or `containers/` in its place.
    fs::set_permissions(store.root(), fs::Permissions::from_mode(0o775)).unwrap();
    store.check_owner().unwrap();
    fs::set_permissions(store.root(), fs::Permissions::from_mode(0o777)).unwrap();
    let error = store.check_owner().unwrap_err().to_string();
    assert!(error.contains("others may write") && error.contains("chmod go-w"), "{error}");
    fs::set_permissions(store.root(), fs::Permissions::from_mode(0o711)).unwrap();
    // Another owner of a directory isolab made: look, then chown it back or remove it.
    if nix::unistd::Uid::effective().is_root() {
        nix::unistd::chown(&mnt, Some(nix::unistd::Uid::from_raw(1234)), None).unwrap();
        let error = store.check_owner().unwrap_err().to_string();
        assert!(error.contains("chown -R") && !error.contains("run as uid"), "{error}");
        nix::unistd::chown(&mnt, Some(nix::unistd::Uid::effective()), None).unwrap();
    }
    let error = store.prepare(new(Some("three"), &point)).err().unwrap().to_string();
    assert!(error.contains("inside the store's mount points"), "{error}");
}
