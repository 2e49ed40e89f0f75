//! What every stage binary does around its real work: parse the command line, and turn the
//! outcome into an exit code with one line on stderr.
//!
//! This is the one place that knows the exit-code convention of [`crate::exit`] from the
//! user's side: bad usage is a runtime error (125), so that a typo is never mistaken for the
//! command's own exit status. It is the one module of the library that writes to stderr, and
//! only the binaries' `main`s call it; every other module returns what to say. It also writes a
//! command line as a reader would type it ([`shell_quote`]), for `ps` and the tests' transcripts.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{ArgMatches, Command, FromArgMatches, Parser};

use crate::exit;
use crate::process::Failure;

/// Parses the command line. `--help` and `--version` print and give `Err(0)`; bad usage gives
/// `Err(125)` after printing one line: `<program>: error: <what>`.
pub fn parse<T: Parser>(program: &str) -> Result<T, ExitCode> {
    parse_from(program, T::command(), std::env::args_os()).map(|(cli, _)| cli)
}

/// [`parse`] with a command a stage has adjusted (stage 5 lifts `--rootfs`' `required`: an
/// image may stand in for it), from `args`; also gives the matches, to tell an option the
/// user typed from its default (`ArgMatches::value_source`).
pub fn parse_from<T: FromArgMatches>(
    program: &str,
    command: Command,
    args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
) -> Result<(T, ArgMatches), ExitCode> {
    let parsed = command
        .try_get_matches_from(args)
        .and_then(|matches| T::from_arg_matches(&matches).map(|cli| (cli, matches)));
    match parsed {
        Ok(parsed) => Ok(parsed),
        Err(error)
            if matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) =>
        {
            let _ = error.print();
            Err(ExitCode::SUCCESS)
        }
        Err(error) if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            Err(ExitCode::from(exit::RUNTIME_ERROR))
        }
        Err(error) => {
            eprintln!("{program}: error: {} (see `{program} --help`)", usage_line(&error));
            Err(ExitCode::from(exit::RUNTIME_ERROR))
        }
    }
}

/// clap's message on one line, without its `error: ` prefix and its usage footer. For a value
/// our own parser refused, our message alone (it already names the flag and the value).
fn usage_line(error: &clap::Error) -> String {
    if error.kind() == ErrorKind::ValueValidation {
        if let Some(source) = std::error::Error::source(error) {
            return source.to_string();
        }
    }
    let rendered = error.render().to_string();
    let text: Vec<&str> =
        rendered.lines().take_while(|line| !line.trim().is_empty()).map(str::trim).collect();
    let text = text.join(" ");
    text.strip_prefix("error: ").unwrap_or(&text).to_string()
}

/// Turns a stage's result into its exit code, printing a failure as one line.
pub fn finish(program: &str, result: Result<u8, Failure>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("{program}: error: {failure}");
            ExitCode::from(failure.code)
        }
    }
}

/// Tells the user `lines` on stderr, each after `<program>: `. Written, not printed: a closed
/// stderr must not turn a report into a panic.
pub fn say(program: &str, lines: &[String]) {
    use std::io::Write;
    let mut stderr = std::io::stderr().lock();
    for line in lines {
        let _ = writeln!(stderr, "{program}: {line}");
    }
}

/// An argument as a reader would type it in a shell: as it is when it holds only characters no
/// shell treats specially, else in single quotes (a `'` inside becoming `'\''`). For showing a
/// command line (`ps`, the book's transcripts), never for running one: isolab passes argv
/// straight to `execve(2)`, with no shell in between.
pub fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_quotes_only_what_a_shell_would_change() {
        assert_eq!(shell_quote("/bin/sh"), "/bin/sh");
        assert_eq!(shell_quote("--memory=32M,x@y+z%"), "--memory=32M,x@y+z%");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("echo hello"), "'echo hello'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }
}
