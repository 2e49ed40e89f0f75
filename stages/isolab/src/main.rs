//! `isolab`: the classroom tool.
//!
//! Two verbs, one small module each:
//! - `isolab compare` ([`compare`]) runs the isolation probe on the host and under every stage
//!   built so far, and prints the matrix of what each stage isolates and what still leaks.
//! - `isolab doctor` ([`doctor`]) checks that this machine has what the course needs, and
//!   says how to fix what it lacks.

mod compare;
mod doctor;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use libisolab::{cli, exit};

const EXAMPLES: &str = "\
Examples:
  sudo isolab doctor                 # can this machine run the course?
  sudo isolab compare                # the isolation matrix, with evidence
  sudo isolab compare --markdown     # the matrix alone, as a markdown table
  sudo isolab compare --json --keep  # everything, and keep the rootfs and markers";

const COMPARE_EXAMPLES: &str = "\
Every run plants fresh markers on the host (a directory, a process, a TCP listener on
127.0.0.1, a SysV shared-memory segment, all named after a random token), runs
`isolab-probe` on the host and under each stage binary found next to isolab, watches the
host's hostname and mount table meanwhile, and removes everything again.

Examples:
  sudo isolab compare
  sudo isolab compare --markdown
  sudo isolab compare --json | jq '.columns[] | {id, cells: [.cells[] | .status]}'

Exit status: 0 when every column's probe reported, 1 when one did not (the matrix still
shows it), 125 if compare itself failed (not root, no rootfs-builder, ...).";

const DOCTOR_EXAMPLES: &str = "\
Examples:
  sudo isolab doctor

Exit status: 0 when nothing fails (warnings allowed), 1 otherwise.";

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
    /// Check that this machine has what the course needs, with a fix for each problem
    #[command(after_help = DOCTOR_EXAMPLES)]
    Doctor(doctor::Args),
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
        Verb::Compare(args) => compare::run(args),
        Verb::Doctor(args) => doctor::run(args),
    }
}
