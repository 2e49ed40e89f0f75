//! What `--dry-run` prints: the plan, step by step, as `strace` would show the calls. Every
//! line comes from a step's own `Display` (see [`super::steps`]), in the order the run takes
//! the steps.

use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::unistd::Uid;

use super::steps::CHILD;
use super::Plan;
use crate::idrange::UserIds;

impl Plan {
    /// `--dry-run`'s text: the plan, the runtime's own pid shown as `<runtime pid>` (a real
    /// run has another), then what would be refused for a user without the privileges.
    pub fn dry_run(&self) -> String {
        self.dry_run_between("", "")
    }

    /// [`Plan::dry_run`], with a later chapter's steps `before` and `after` the plan's own
    /// (stage 4's store).
    pub fn dry_run_between(&self, before: &str, after: &str) -> String {
        let mut text = format!("{before}{self}{after}");
        if let Some(cgroup) = &self.cgroup {
            text = cgroup.hide_runtime_pid(&text);
        }
        let user = Uid::effective();
        if let Err(refused) = self.check_privileges() {
            text.push_str(&format!("# as uid {user}, this would be refused: {refused}\n"));
        }
        if let Some(refused) = self.cgroup.as_ref().and_then(|cgroup| cgroup.refused.as_ref()) {
            text.push_str(&format!("# as uid {user}, the cgroup would be refused: {refused}\n"));
        }
        text
    }
}

// ANCHOR: display
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pid = CHILD;
        writeln!(f, "# the plan: nothing below has run (--dry-run)")?;
        writeln!(f, "# rootfs: {}", self.rootfs.display())?;
        writeln!(f, "# namespaces: {}", self.namespaces)?;
        for line in self.user_ids.iter().flat_map(UserIds::describe) {
            writeln!(f, "# {line}")?;
        }
        if let Some(cgroup) = &self.cgroup {
            writeln!(f, "# cgroup: {} ({})", cgroup.plan.id, cgroup.plan.version)?;
        }
        let idmapped = self.idmapped_lowers();
        if self.cgroup.is_some() || idmapped.is_some() {
            writeln!(f, "runtime, before the clone:")?;
        }
        if let Some(cgroup) = &self.cgroup {
            for step in &cgroup.plan.steps {
                if !step.why().is_empty() {
                    writeln!(f, "  # {}", step.why())?;
                }
                writeln!(f, "  {step}")?;
            }
        }
        if let Some(join) = self.joins_itself() {
            writeln!(
                f,
                "  # v1: the files the child will move itself in through (opened as root)"
            )?;
            for line in join.before_clone() {
                writeln!(f, "  {line}")?;
            }
        }
        if let Some(lowers) = idmapped {
            writeln!(f, "  # to hand the idmapped base to the child: it keeps its end")?;
            writeln!(f, "  {}", lowers.before_clone())?;
        }
        let cloned = self.clone_namespaces();
        let into = self.cgroup_to_clone_into();
        if let Some(dir) = into {
            let flags = match cloned.clone_flags().is_empty() {
                true => String::new(),
                false => format!("{} | ", cloned.flag_names()),
            };
            writeln!(f, "# born in its cgroup: nothing to move, nothing counted elsewhere")?;
            writeln!(f, "clone3({flags}CLONE_INTO_CGROUP, cgroup=open(\"{}\"))", dir.display())?;
        } else if cloned.clone_flags().is_empty() {
            writeln!(f, "# no namespace: a plain fork, as in stage 1")?;
            writeln!(f, "clone(SIGCHLD)")?;
        } else {
            writeln!(f, "clone({} | SIGCHLD)", cloned.flag_names())?;
        }
        writeln!(f, "parent, for child {pid} (which waits on the sync pipe):")?;
        if let (Some(cgroup), None, None) = (&self.cgroup, into, self.joins_itself()) {
            writeln!(f, "  # into its cgroup first: from now on, all it does is counted")?;
            for procs in &cgroup.plan.join {
                writeln!(f, "  write(\"{}\", \"{pid}\")", procs.display())?;
            }
        }
        for step in &self.outside {
            for line in step.to_string().lines() {
                writeln!(f, "  {line}")?;
            }
        }
        writeln!(f, "  write(sync pipe, \"g\")")?;
        writeln!(f, "child {pid}:")?;
        writeln!(f, "  prctl(PR_SET_PDEATHSIG, SIGKILL)")?;
        let mut last_why = None;
        for step in &self.inside {
            // Each reason once, above the first step it explains.
            if let Some(why) = step.why().filter(|&why| Some(why) != last_why) {
                writeln!(f, "  # {why}")?;
                last_why = Some(why);
            }
            for line in step.to_string().lines() {
                writeln!(f, "  {line}")?;
            }
            if step.changes_uid() {
                writeln!(f, "  # a change of uid clears the parent-death signal: set it again")?;
                writeln!(f, "  prctl(PR_SET_PDEATHSIG, SIGKILL)")?;
                last_why = None;
            }
        }
        let argv: Vec<String> = self
            .command
            .argv
            .iter()
            .map(|arg| format!("\"{}\"", String::from_utf8_lossy(arg.as_bytes())))
            .collect();
        let exec =
            format!("execve({}, [{}])", argv.first().map_or("?", String::as_str), argv.join(", "));
        if self.runs_init() {
            match self.init {
                true => writeln!(f, "  # --init: we stay PID 1, the command is PID 2")?,
                false => {
                    writeln!(f, "  # no pid namespace: we stay, to end what the command leaves")?
                }
            }
            writeln!(f, "  fork()")?;
            writeln!(f, "    child: {exec}")?;
            writeln!(
                f,
                "    init: forward signals to the command, reap orphans, exit with its code"
            )?;
        } else {
            writeln!(f, "  {exec}")?;
        }
        write!(f, "parent: wait for {pid}, forwarding signals")?;
        if let Some(veth) = self.veth() {
            write!(f, "; then RTM_DELLINK {}", veth.host_link(pid))?;
        }
        writeln!(f)?;
        if let Some(cgroup) = &self.cgroup {
            writeln!(f, "parent, once {pid} has exited:")?;
            writeln!(f, "  # the report: read the cgroup's meters; then kill what is left, and:")?;
            let dirs: Vec<&Path> =
                cgroup.plan.join.iter().filter_map(|procs| procs.parent()).collect();
            for dir in &dirs {
                writeln!(f, "  rmdir(\"{}\")", dir.display())?;
            }
            writeln!(f, "  # and the shared parents, unless another container is in them")?;
            for parent in dirs.iter().filter_map(|dir| dir.parent()) {
                writeln!(f, "  rmdir(\"{}\")", parent.display())?;
            }
        }
        Ok(())
    }
}
// ANCHOR_END: display
