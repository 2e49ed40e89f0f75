//! The matrix for people: an aligned text table with the evidence under it (the default),
//! or a markdown table of the verdicts alone (`--markdown`, for the book: no evidence, so
//! nothing in it changes from run to run).

use isolab_probe::CheckId;

use super::Comparison;

/// The verdicts as rows of cells: a header row, then one row per check.
fn rows(comparison: &Comparison) -> Vec<Vec<String>> {
    let mut header = vec!["check".to_string()];
    header.extend(comparison.columns.iter().map(|column| column.title.to_string()));
    let mut rows = vec![header];
    for (index, id) in CheckId::ALL.iter().enumerate() {
        let mut row = vec![id.name().to_string()];
        for column in &comparison.columns {
            row.push(column.cells.get(index).map_or("n/a", |cell| cell.status.as_str()).into());
        }
        rows.push(row);
    }
    rows
}

fn widths(rows: &[Vec<String>]) -> Vec<usize> {
    let columns = rows.first().map_or(0, Vec::len);
    (0..columns).map(|c| rows.iter().map(|row| row[c].chars().count()).max().unwrap_or(0)).collect()
}

fn padded(cells: &[String], widths: &[usize], separator: &str) -> String {
    let cells: Vec<String> =
        cells.iter().zip(widths).map(|(cell, &width)| format!("{cell:width$}")).collect();
    cells.join(separator)
}

/// The markdown table: verdicts only.
pub fn markdown(comparison: &Comparison) -> String {
    let rows = rows(comparison);
    let widths = widths(&rows);
    let mut out = String::new();
    for (index, row) in rows.iter().enumerate() {
        out.push_str(&format!("| {} |\n", padded(row, &widths, " | ")));
        if index == 0 {
            let rule: Vec<String> = widths.iter().map(|&width| "-".repeat(width)).collect();
            out.push_str(&format!("| {} |\n", rule.join(" | ")));
        }
    }
    out
}

/// The text table, the evidence of every cell, and what this run planted and removed.
pub fn text(comparison: &Comparison) -> String {
    let rows = rows(comparison);
    let widths = widths(&rows);
    let mut out = String::from(
        "isolation matrix: what a process in each column can see of the host, and change there\n\n",
    );
    for row in &rows {
        out.push_str(padded(row, &widths, "  ").trim_end());
        out.push('\n');
    }

    let title_width = comparison.columns.iter().map(|c| c.title.len()).max().unwrap_or(0);
    out.push_str("\nevidence\n");
    for (index, id) in CheckId::ALL.iter().enumerate() {
        out.push_str(&format!("\n{id}: {}\n", id.question()));
        // A column whose probe did not report is explained once, below, not in every row.
        for column in comparison.columns.iter().filter(|column| column.error.is_none()) {
            if let Some(cell) = column.cells.get(index) {
                let decided = match cell.decided_by {
                    super::verdict::DecidedBy::Host => " [seen from the host]",
                    super::verdict::DecidedBy::Probe => "",
                };
                out.push_str(&format!(
                    "  {:title_width$}  {:8}  {}{decided}\n",
                    column.title, cell.status, cell.evidence
                ));
            }
        }
    }

    let failed: Vec<_> = comparison.columns.iter().filter(|c| c.error.is_some()).collect();
    if !failed.is_empty() {
        out.push_str("\ncolumns whose probe did not report:\n");
        for column in failed {
            out.push_str(&format!(
                "  {}: {}\n",
                column.title,
                column.error.as_deref().unwrap_or("")
            ));
        }
    }

    let markers = &comparison.markers;
    out.push_str(&format!(
        "\nthis run: token {}, marker directory {}, marker process {}, listener 127.0.0.1:{}, \
         shm key {:#x}\n",
        comparison.token,
        markers.host_path.display(),
        markers.host_pid,
        markers.port,
        markers.shm_key
    ));
    if comparison.kept {
        out.push_str(&format!(
            "kept {} (--keep): the rootfs and the marker directory are still there\n",
            comparison.workdir.display()
        ));
    } else {
        out.push_str("everything this run created on the host has been removed\n");
    }
    out
}
