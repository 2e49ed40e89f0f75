//! The store's commands: `ps`, `diff`, `rm`, `df`, `gc`. Each reads or changes the store
//! (`libisolab::store`) and prints what it found; none runs a container.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use libisolab::cgroups::format_size;
use libisolab::process::Failure;
use libisolab::store::{self, runtime, Container, Listed, State, Status, Store};
use libisolab::{cli, copy};

use crate::PROGRAM;

/// `ps`: one line per container, broken ones included (and said why).
pub fn ps(store: &Store) -> Result<u8, Failure> {
    // STATUS is as wide as its widest value, `exited (runtime killed)` (wider than `running
    // (pid 4194304)`, the largest pid_max), so that the table does not shift with the number
    // of digits in a pid.
    let status = format!("{:<23}", "STATUS");
    let mut rows =
        vec![["CONTAINER ID", "NAME", &status, "EXIT", "CREATED (UTC)", "STORAGE", "COMMAND"]
            .map(String::from)
            .to_vec()];
    let listed = store.list()?;
    // A store stage 5 shares holds containers of images too: then an IMAGE column says which.
    let images = listed.iter().any(
        |listed| matches!(listed, Listed::Found(container, _) if container.config.image.is_some()),
    );
    if images {
        rows[0].insert(2, "IMAGE".to_string());
    }
    for listed in listed {
        let mut row = match listed {
            Listed::Found(container, state) => {
                let mut shown = row(&container, &state);
                if images {
                    let image = container.config.image.as_ref().map(|image| image.name.clone());
                    shown.insert(2, image.unwrap_or_else(|| "-".to_string()));
                }
                shown
            }
            Listed::Broken { id, name, error } => vec![
                id,
                name.unwrap_or_else(|| "?".to_string()),
                "broken".to_string(),
                "-".to_string(),
                "-".to_string(),
                "-".to_string(),
                error.to_string(),
            ],
        };
        if images && row[2] == "broken" {
            row.insert(2, "-".to_string());
        }
        rows.push(row);
    }
    print_table(&rows);
    Ok(0)
}

fn row(container: &Container, state: &State) -> Vec<String> {
    let config = &container.config;
    let status = match (state.status, state.runtime_pid) {
        (Status::Running, Some(pid)) => format!("running (pid {pid})"),
        // Its lock is free: the runtime was killed (a `gc` will write this down).
        (_, _) if state.runtime_died => "exited (runtime killed)".to_string(),
        (status, _) => status.to_string(),
    };
    let exit = match (state.status, state.exit_code) {
        (Status::Exited, Some(code)) => code.to_string(),
        (Status::Exited, None) => "unknown".to_string(),
        _ => "-".to_string(),
    };
    let command: Vec<String> = config.command.iter().map(|arg| cli::shell_quote(arg)).collect();
    vec![
        config.id.clone(),
        config.name.clone(),
        status,
        exit,
        store::show_time(&config.created),
        config.storage.to_string(),
        command.join(" "),
    ]
}

/// `diff`: the changes, one per line; or, with `--upper`, the upper as overlayfs wrote it.
pub fn diff(store: &Store, name: &str, upper: bool) -> Result<u8, Failure> {
    let container = store.find(name)?;
    let mut out = std::io::stdout().lock();
    if upper {
        for entry in container.upper_entries()? {
            let _ = writeln!(out, "{entry}");
        }
    } else {
        for change in container.changes()? {
            let _ = writeln!(out, "{change}");
        }
    }
    Ok(0)
}

/// `rm`: removes each container; the first failure ends it (and is the error).
pub fn rm(store: &Store, names: &[String], force: bool) -> Result<u8, Failure> {
    // What dead runtimes left is cleaned first (as `run` does); if that fails, it says so and
    // removes anyway: `rm` is how a user gets out of a broken store (or a full disk).
    cli::say(PROGRAM, &runtime::collect_garbage(store));
    for name in names {
        let removed = store.remove(name, force)?;
        println!("{removed}");
    }
    Ok(0)
}

// ANCHOR: df
/// `df`: each base with its size, each container with the disk it takes of its own, and
/// what full copies would take instead.
pub fn df(store: &Store) -> Result<u8, Failure> {
    let mut bases: BTreeMap<PathBuf, Vec<Container>> = BTreeMap::new();
    for listed in store.list()? {
        let Listed::Found(container, _) = listed else { continue };
        let base = container.config.lowers.first().cloned().unwrap_or_default();
        bases.entry(base).or_default().push(container);
    }
    let (mut base_total, mut own_total, mut as_copies, mut count) = (0, 0, 0, 0);
    for (base, containers) in &bases {
        // A base removed since its containers were made takes no disk, but is not "0 B".
        let present = base.exists();
        let size = if present { copy::disk_usage(base)? } else { 0 };
        let shown = if present {
            format!("{} on disk", format_size(size))
        } else {
            "missing (removed since: its containers cannot start)".to_string()
        };
        let plural = if containers.len() == 1 { "" } else { "s" };
        println!("base {}: {shown}, {} container{plural}", base.display(), containers.len());
        let header = ["CONTAINER ID", "NAME", "STORAGE", "OWN DISK USE"];
        let mut table = vec![header.map(String::from).to_vec()];
        for container in containers {
            let own = container.disk_usage()?;
            own_total += own;
            table.push(vec![
                container.config.id.clone(),
                container.config.name.clone(),
                container.config.storage.to_string(),
                format_size(own),
            ]);
        }
        print_table(&table);
        println!();
        base_total += size;
        as_copies += size * containers.len() as u64;
        count += containers.len();
    }
    println!(
        "{count} container{}: {} of bases, {} of their own; as full copies of their bases they \
         would take {}",
        if count == 1 { "" } else { "s" },
        format_size(base_total),
        format_size(own_total),
        format_size(as_copies)
    );
    Ok(0)
}
// ANCHOR_END: df

/// Prints rows in columns, two spaces apart, the last column as it is.
pub fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = std::io::stdout().lock();
    for row in rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[column]));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}
