//! `isolab`: the classroom tool.
//!
//! Four verbs, one small module each:
//! - `isolab compare` ([`compare`]) runs the isolation probe on the host and under every stage
//!   built so far, and prints the matrix of what each stage isolates and what still leaks.
//! - `isolab doctor` ([`doctor`]) checks that this machine has what the course needs, and
//!   says how to fix what it lacks.
//! - `isolab bench` ([`bench`]) runs the same workloads on the host and in a container, and
//!   prints how close to the host the container runs, and what each stage costs to start.
//! - `isolab gc` ([`gc`]) removes what killed runtimes left behind: cgroups and store state.

mod bench;
mod compare;
mod doctor;
mod gc;
mod lab;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use libisolab::{cli, exit};

const EXAMPLES: &str = "\
Examples:
  isolab doctor                      # can this machine run the course, for you?
  sudo isolab compare                # the isolation matrix, with evidence
  sudo isolab compare --markdown     # the matrix alone, as a markdown table
  sudo isolab compare --json --keep  # everything, and keep the rootfs and markers
  sudo isolab bench --quick          # how close to the host? (seconds, not a measurement)
  sudo isolab gc                     # remove the cgroups of killed runtimes";

const BENCH_EXAMPLES: &str = "\
Each workload runs on the host and inside the highest stage built (stage 5's image, else
stage 4's overlay), and in crun when installed, the same binaries on the same data, the sides
taking turns for --runs rounds. Needs sysbench and iperf3 (scripts/setup installs them).

Examples:
  sudo isolab bench                               # everything (about 2 minutes, release build)
  sudo isolab bench --quick                       # small sizes, 3 runs: does it all work?
  sudo isolab bench --only cpu,mem --runs 10      # the seed's first rows, 10 rounds
  sudo isolab bench --only start                  # start latency of every stage and sandbox
  sudo isolab bench --json | jq '.rows[] | {id, ratio: .ratio.median}'
  sudo isolab bench --svg chart.svg --markdown table.md

Exit status: 0 when every part ran, 125 if one failed (not root, a tool missing, a directory
for --svg or --markdown missing, ...), 130 after Ctrl-C and 143 after SIGTERM (128 + the
signal), once everything is cleaned up.";

const COMPARE_EXAMPLES: &str = "\
Every run plants fresh markers on the host (a directory, a process, a TCP listener on
127.0.0.1, a SysV shared-memory segment, all named after a random token), runs
`isolab-probe` on the host and under each stage binary found next to isolab, watches the
host's hostname and mount table meanwhile, and removes everything again.

Examples:
  sudo isolab compare
  sudo isolab compare --markdown
  sudo isolab compare --json | jq '.columns[] | {id, cells: [.cells[] | .status]}'
  sudo isolab compare --image 127.0.0.1:5000/team/probe:1   # stage 5 from a pulled image

Exit status: 0 when every column's probe reported, 1 when one did not (the matrix still
shows it), 125 if compare itself failed (not root, no rootfs-builder, ...).";

const DOCTOR_EXAMPLES: &str = "\
After the checks, one line per stage for you as you are: ok (it runs), limited (it runs
without something: the line says what, and a fix how to get it) or no (and what to do).

Examples:
  isolab doctor                # what runs for you
  isolab doctor --stage 2,4    # exit 1 unless stages 2 and 4 run for you
  sudo isolab doctor           # what runs for root

Exit status: 0 when this machine is ready for you: no check fails (warnings allowed), and
the stages you asked for with --stage run for you, fully or limited (without --stage: at
least one does); 1 otherwise.";

const GC_EXAMPLES: &str = "\
A runtime killed with SIGKILL cannot clean up after itself. gc finds what it left:
- cgroups (isolab/<name>-<pid> in each hierarchy) whose runtime pid no longer runs: it kills
  what is left in them and removes them (stage3-cgroups and stage4-overlay do this at start);
- containers in the store (stage 4) whose runtime died: marked exited, --rm ones removed,
  half-made ones removed, mounts left in stopped containers' directories detached.

Without root, gc cleans what is yours: your store, and your cgroups if a cgroup v2 subtree is
delegated to you; the host's cgroups are root's, and gc says so in one line.

Examples:
  sudo isolab gc
  sudo isolab gc --root /tmp/my-store
  isolab gc --root ~/.local/share/isolab     # as yourself: your own store

Exit status: 0 when everything stale it may remove was removed (or there was none), 125
otherwise (and when --root is not a directory).";

const LAB_EXAMPLES: &str = "\
The code a student writes is marked in the reference (`// LAB stageN/task BEGIN` ... `// LAB
END`); a starter is the reference with those regions replaced by todo!(), so the two cannot
drift. The hints are labs/hints.toml: the man page, the shape of the call, the pitfall.

Examples:
  isolab lab list
  isolab lab new 1 ~/lab1 && cd ~/lab1 && cargo build
  isolab lab hint 1 chroot                 # again for the next rung; --level N for one
  isolab lab new 2 ~/lab2 --from ~/lab1    # your stage 1 answers carried over
  sudo isolab lab check                    # maintainers: starters fail, the reference passes

Exit status: 0 on success; check: 1 when a starter passes a task or the reference fails one;
125 on an error.";

const GRADE_EXAMPLES: &str = "\
Each task runs the binary as a user would, on a fresh busybox rootfs, with markers named after
a random token; after each task the host is searched for what it left (mounts, cgroups,
processes), which fails the task. A failure says what was expected, what happened, and the
hint to read.

Each task runs under a memory bound of the grader's own cgroup (--memory-limit).

Examples:
  sudo isolab grade 1 --bin ~/lab1/target/debug/stage1-chroot
  sudo isolab grade 2 --bin ~/lab2/target/debug/stage2-namespaces --junit grade.xml
  sudo isolab grade 3 --bin ~/lab3/target/debug/stage3-cgroups --task join --json
  sudo isolab grade 5 --bin ~/lab5/target/debug/stage5-images   # every task of stages 1-5

Exit status: 0 when every task passed, 1 when one failed, 125 if grading itself failed.";

/// The isolab classroom tool: compare the stages' isolation, check this machine
#[derive(Debug, Parser)]
#[command(name = "isolab", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Run the isolation probe on the host and under each stage; print the matrix (needs root)
    #[command(after_help = COMPARE_EXAMPLES)]
    Compare(compare::Args),
    /// Check that this machine has what the course needs, and what each stage can do for you
    #[command(after_help = DOCTOR_EXAMPLES)]
    Doctor(doctor::Args),
    /// How close to the host does a container run? Throughput ratios and start latency
    #[command(after_help = BENCH_EXAMPLES)]
    Bench(bench::Args),
    /// Clean up after killed runtimes (stale cgroups, stale containers), saying what was removed
    #[command(after_help = GC_EXAMPLES)]
    Gc(gc::Args),
    /// Classroom labs from the reference: list, new STAGE DIR, hint STAGE TASK, check
    #[command(after_help = LAB_EXAMPLES)]
    Lab(lab::Args),
    /// Grade a student's stage binary, black-box, on this stage's tasks and the earlier ones'
    /// (needs root)
    #[command(after_help = GRADE_EXAMPLES)]
    Grade(lab::grade::Args),
}

fn main() -> ExitCode {
    let cli: Cli = match cli::parse("isolab") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("isolab: error: {error:#}");
            ExitCode::from(exit::RUNTIME_ERROR)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.verb {
        Verb::Bench(args) => bench::run(args),
        Verb::Compare(args) => compare::run(args),
        Verb::Doctor(args) => doctor::run(args),
        Verb::Gc(args) => gc::run(args),
        Verb::Lab(args) => lab::run(args),
        Verb::Grade(args) => lab::grade::run(args),
    }
}
