//! Every command the README or the book tells a reader to type must exist, with the flags it
//! is shown with (youki's book told readers to run a make target long after it had moved to a
//! justfile; this test is the cheap insurance against that).
//!
//! For each shell line in a fenced code block (```sh, ```console, ```bash):
//! - an isolab binary (`stage1-chroot run …`): its subcommand's `--help` must succeed and
//!   mention every `--flag` the line uses;
//! - `scripts/NAME`: the script must exist and be executable;
//! - `just RECIPE`: the justfile must have the recipe.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use isolab_tests::{bin_dir, run, text, workspace_root};

/// The workspace's binaries: the tools, and one per stage directory (`stages/stageN-topic`).
fn binaries() -> Vec<String> {
    let mut names: Vec<String> =
        ["rootfs-builder", "isolab", "isolab-probe"].iter().map(|n| n.to_string()).collect();
    for entry in fs::read_dir(workspace_root().join("stages")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.starts_with("stage") {
            names.push(name);
        }
    }
    names
}

/// The shell lines of a markdown text: inside ```sh/console/bash fences, without `$ ` prompts
/// and `sudo`, and not the output lines of console blocks.
fn shell_lines(markdown: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut fence: Option<String> = None;
    for line in markdown.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(rest.split(',').next().unwrap_or_default().to_string()),
            };
            continue;
        }
        let Some(kind) = &fence else { continue };
        let command = match kind.as_str() {
            "sh" | "bash" | "shell" => trimmed,
            "console" => match trimmed.strip_prefix("$ ") {
                Some(command) => command,
                None => continue,
            },
            _ => continue,
        };
        // Drop comments and the `sudo` in front.
        let command = command.split(" #").next().unwrap_or_default().trim();
        let command = command.strip_prefix("sudo ").unwrap_or(command).trim();
        if !command.is_empty() && !command.starts_with('#') {
            lines.push(command.to_string());
        }
    }
    lines
}

fn documents() -> Vec<(String, String)> {
    let root = workspace_root();
    let mut docs =
        vec![("README.md".to_string(), fs::read_to_string(root.join("README.md")).unwrap())];
    for entry in fs::read_dir(root.join("book/src")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("md") {
            let name = format!("book/src/{}", path.file_name().unwrap().to_str().unwrap());
            docs.push((name, fs::read_to_string(&path).unwrap()));
        }
    }
    docs
}

/// Checks one command line; returns a complaint if it does not match the real tools.
fn check(line: &str) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let first = *words.first()?;
    let program = first.rsplit('/').next().unwrap_or(first);
    let root = workspace_root();
    if first.starts_with("scripts/") {
        let path = root.join(first);
        let executable = fs::metadata(&path).map(|m| m.permissions().mode() & 0o111 != 0);
        return (!executable.unwrap_or(false))
            .then(|| format!("{first} is not an executable script"));
    }
    if first == "just" {
        let recipe = words.get(1)?;
        let justfile = fs::read_to_string(root.join("justfile")).unwrap();
        let has = justfile
            .lines()
            .any(|l| l.split(|c: char| c == ':' || c.is_whitespace()).next() == Some(recipe));
        return (!has).then(|| format!("the justfile has no recipe `{recipe}`"));
    }
    if !binaries().iter().any(|name| name == program) {
        return None;
    }
    let path = bin_dir().join(program);
    if !path.exists() {
        return Some(format!("{program} is not a binary of this workspace (yet)"));
    }
    // The program's help, then its subcommand's: the first word before `--` that its
    // `Commands:` list names, wherever it stands (`stage5-images --root S images --digests`
    // has a global option first). A flag must be in one of their helps.
    let top = run(std::process::Command::new(&path).arg("--help"));
    if !top.status.success() {
        return Some(format!("`{line}`: `{program} --help` failed: {}", text(&top.stderr)));
    }
    // Down the subcommands (`isolab lab new`), each help added to what a flag may be in.
    let mut help_text = text(&top.stdout);
    let mut chain: Vec<&str> = Vec::new();
    let mut commands = subcommands(&help_text);
    let args = words[1..].iter().take_while(|word| **word != "--");
    for word in args {
        if !commands.iter().any(|command| command == word) {
            continue;
        }
        chain.push(word);
        let output = run(std::process::Command::new(&path).args(&chain).arg("--help"));
        if !output.status.success() {
            let shown = chain.join(" ");
            return Some(format!("`{line}`: `{program} {shown} --help` failed"));
        }
        let sub_help = text(&output.stdout);
        commands = subcommands(&sub_help);
        help_text.push('\n');
        help_text.push_str(&sub_help);
    }
    for word in &words {
        if word == &"--" {
            break;
        }
        if let Some(flag) = word.strip_prefix("--") {
            let flag = flag.split('=').next().unwrap();
            if !help_text.contains(&format!("--{flag}")) {
                return Some(format!("`{line}`: {program} has no flag --{flag}"));
            }
        }
    }
    None
}

/// The subcommands a clap `--help` lists under `Commands:`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| line.trim() != "Commands:")
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn documented_commands_exist() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for (name, markdown) in documents() {
        for line in shell_lines(&markdown) {
            checked += 1;
            if let Some(problem) = check(&line) {
                problems.push(format!("{name}: {problem}"));
            }
        }
    }
    assert!(checked > 5, "found only {checked} commands: is the parser broken?");
    assert!(problems.is_empty(), "documented commands that do not work:\n{}", problems.join("\n"));
}

#[test]
fn the_checker_catches_a_wrong_flag() {
    let lines = shell_lines(
        "```console\n$ sudo stage1-chroot run --rootfs r --no-such-flag -- sh\noutput\n```\n",
    );
    assert_eq!(lines, ["stage1-chroot run --rootfs r --no-such-flag -- sh"]);
    if Path::new(&bin_dir().join("stage1-chroot")).exists() {
        let problem = check(&lines[0]).expect("a wrong flag is reported");
        assert!(problem.contains("--no-such-flag"), "{problem}");
        assert!(check("stage1-chroot run --rootfs r --user 1 -- sh").is_none());
        assert!(check("scripts/nope").is_some());
        assert!(check("just nope").is_some());
    }
}
