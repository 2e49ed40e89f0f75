//! The Dockerfile subset that `build` reads, and the build cache's keys.
//!
//! A Dockerfile is a list of instructions, one per logical line, each making one step of the
//! image (Dockerfile reference, docs.docker.com/reference/dockerfile). isolab builds one stage:
//! `FROM`, then `RUN` (a command in a container over the image so far: its changes become a
//! layer), `COPY` (files from the build context: a layer), and the instructions that only
//! change the image's config (`ENV`, `WORKDIR`, `USER`, `CMD`, `ENTRYPOINT`, `LABEL`) or the
//! build's variables (`ARG`). Everything else is refused with the file, the line and what to
//! write instead, because silently ignoring an instruction builds a different image than the
//! one the author meant.
//!
//! Why our own parser: the Rust crates we looked at did not fit. `dockerfile-parser` (0.9,
//! pest) has no `WORKDIR`/`USER` yet, reports byte spans rather than lines and does no variable
//! substitution; `parse-dockerfile` (0.1) handles the syntax well (heredocs, escape directive)
//! but gives byte spans and no substitution either. Substitution and the scoping of `ARG` and
//! `ENV` are most of what this module has to get right, the syntax is the small part, and
//! writing it here lets the chapter show it whole.
//!
//! The build cache: a step whose [`cache_key`] was built before is not run again. The key is
//! the parent image's config digest plus the instruction after substitution (plus, for `COPY`,
//! the digest of the files it copies, [`copy_sources_digest`]; for `RUN`, the `ARG` values it
//! sees in its environment), so a change anywhere above a step changes its key too.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::digest::{Digest, DigestWriter};
use crate::error::{Error, Result};

/// The instructions isolab builds, for messages.
const SUPPORTED: &str = "FROM, RUN, COPY, ENV, WORKDIR, USER, CMD, ENTRYPOINT, LABEL, ARG";

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    /// Its instructions, in order; the first non-`ARG` one is `FROM`.
    pub instructions: Vec<Instruction>,
    /// The `--build-arg`s that no `ARG` declares: docker warns about them, and so may the
    /// binary (the library never prints).
    pub unused_build_args: Vec<String>,
}

/// One instruction, on the line where it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instruction {
    /// 1-based line where it starts.
    pub line: usize,
    /// As written, continuation lines joined: for history's `created_by` and messages.
    pub text: String,
    /// What it asks for, variables substituted.
    pub kind: Kind,
    /// The `ARG`s in scope with a value, sorted by name. The builder exports them to a `RUN`'s
    /// environment (an `ENV` of the same name wins), and [`cache_key`] includes them for `RUN`.
    pub build_args: Vec<(String, String)>,
}

/// What an instruction asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Kind {
    /// `FROM scratch` or `FROM name:tag` (ARGs declared before FROM substituted).
    From { image: String },
    /// A command run in a container over the image so far.
    Run { command: Command },
    /// Files of the build context copied into the image.
    Copy { sources: Vec<String>, dest: String, chown: Option<String> },
    /// Environment variables of the image (and of later steps).
    Env { pairs: Vec<(String, String)> },
    /// The working directory of later steps and of the container.
    Workdir { path: String },
    /// The user later steps and the container run as.
    User { user: String },
    /// The default command (after the entrypoint).
    Cmd { command: Command },
    /// The command the container always runs.
    Entrypoint { command: Command },
    /// Metadata of the image.
    Label { pairs: Vec<(String, String)> },
    /// A build variable, set with `--build-arg NAME=VALUE`.
    Arg { name: String, default: Option<String> },
}

/// A command in shell form (`RUN make all`) or exec form (`RUN ["make", "all"]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Command {
    /// Run as `["/bin/sh", "-c", text]`: the shell expands variables, pipes and globs.
    Shell(String),
    /// The JSON form: the argv itself, no shell.
    Exec(Vec<String>),
}

impl Command {
    /// The argv to execute.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(text) => vec!["/bin/sh".into(), "-c".into(), text.clone()],
            Command::Exec(argv) => argv.clone(),
        }
    }
}

/// `<file>:<line>: <what>`: every refusal names where, and says what would be right.
fn refuse(path: &Path, line: usize, what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}:{line}: {what}", path.display()))
}

/// Parses the text of a Dockerfile (`path` only for messages), substituting `build_args`.
pub fn parse(path: &Path, text: &str, build_args: &[(String, String)]) -> Result<Dockerfile> {
    let (escape, lines) = logical_lines(path, text)?;
    let given: BTreeMap<&str, &str> =
        build_args.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    let mut parser = Parser {
        path,
        escape,
        given,
        used: Vec::new(),
        global_args: BTreeMap::new(),
        stage_args: BTreeMap::new(),
        env: BTreeMap::new(),
        seen_from: false,
    };
    let mut instructions = Vec::new();
    for (line, text) in lines {
        let kind = parser.instruction(line, &text)?;
        let build_args = parser.stage_args.clone().into_iter().collect();
        instructions.push(Instruction { line, text, kind, build_args });
    }
    if !parser.seen_from {
        return Err(refuse(
            path,
            1,
            "no FROM (a Dockerfile starts with FROM scratch or FROM NAME:TAG)",
        ));
    }
    let unused_build_args = (build_args.iter())
        .filter(|(name, _)| !parser.used.contains(&name.as_str()))
        .map(|(name, _)| name.clone())
        .collect();
    Ok(Dockerfile { path: path.to_path_buf(), instructions, unused_build_args })
}

/// Joins continuation lines into logical lines `(first line, text)`, after reading the parser
/// directives, and returns the escape character with them.
fn logical_lines(path: &Path, text: &str) -> Result<(char, Vec<(usize, String)>)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut escape = '\\';
    // Parser directives (`# escape=`, `# syntax=`, `# check=`) count only at the very top: the
    // first comment, blank line or instruction ends them, and later they are plain comments.
    let mut in_directives = true;
    let mut lines = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = raw.trim();
        if in_directives {
            if let Some((name, value)) = directive(trimmed) {
                // `syntax` picks a BuildKit frontend and `check` tunes its linter: isolab has one
                // parser and no linter, so both are read and ignored, as the classic builder did.
                if name.eq_ignore_ascii_case("escape") {
                    escape = match value {
                        "\\" => '\\',
                        "`" => '`',
                        other => {
                            let what =
                                format!("escape={other} is not an escape character (use \\ or `)");
                            return Err(refuse(path, number, what));
                        }
                    };
                }
                continue;
            }
            in_directives = false;
        }
        // Blank lines and comment lines are skipped, even in the middle of a continued
        // instruction: the reference allows comments between the lines of a long RUN.
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        // The first line loses its indentation; continuation lines keep theirs, as docker does.
        let body = if pending.is_some() { raw.trim_end() } else { trimmed };
        let (body, continues) = match body.strip_suffix(escape) {
            Some(before) => (before, true),
            None => (body, false),
        };
        let (_, joined) = pending.get_or_insert_with(|| (number, String::new()));
        joined.push_str(body);
        if !continues {
            lines.extend(pending.take());
        }
    }
    if let Some((line, _)) = pending {
        let what = format!("the instruction continues past the end of the file (its last line ends in {escape}: remove it, or finish the instruction)");
        return Err(refuse(path, line, what));
    }
    Ok((escape, lines))
}

/// `# name=value` at the top of the file.
fn directive(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.strip_prefix('#')?.split_once('=')?;
    let name = name.trim();
    let first_is_letter = name.starts_with(|c: char| c.is_ascii_alphabetic());
    (first_is_letter && name.chars().all(|c| c.is_ascii_alphanumeric()))
        .then(|| (name, value.trim()))
}

/// The parser's state between instructions: the variables in scope.
struct Parser<'a> {
    path: &'a Path,
    escape: char,
    given: BTreeMap<&'a str, &'a str>,
    used: Vec<&'a str>,
    /// ARGs declared before FROM: usable in FROM only, and as defaults of a later bare `ARG`.
    global_args: BTreeMap<String, String>,
    /// ARGs declared after FROM, with a value.
    stage_args: BTreeMap<String, String>,
    /// ENV so far: it overrides an ARG of the same name (reference, "Using ARG variables").
    env: BTreeMap<String, String>,
    seen_from: bool,
}

impl Parser<'_> {
    fn instruction(&mut self, line: usize, text: &str) -> Result<Kind> {
        let refuse = |what: String| refuse(self.path, line, what);
        let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        let rest = rest.trim();
        let name = word.to_ascii_uppercase();
        let usage = match name.as_str() {
            "FROM" => "FROM scratch, or FROM NAME[:TAG]",
            "RUN" => "RUN COMMAND, or RUN [\"EXECUTABLE\", \"ARG\", …]",
            "COPY" => "COPY [--chown=USER[:GROUP]] SOURCE… DEST",
            "ENV" => "ENV NAME=VALUE …",
            "WORKDIR" => "WORKDIR /PATH",
            "USER" => "USER NAME[:GROUP], or USER UID[:GID]",
            "CMD" => "CMD COMMAND, or CMD [\"EXECUTABLE\", \"ARG\", …]",
            "ENTRYPOINT" => "ENTRYPOINT COMMAND, or ENTRYPOINT [\"EXECUTABLE\", \"ARG\", …]",
            "LABEL" => "LABEL NAME=VALUE …",
            "ARG" => "ARG NAME[=DEFAULT]",
            "ADD" => {
                return Err(refuse("ADD is not supported: use COPY (ADD's URLs and automatic extraction of archives are not supported)".into()));
            }
            "EXPOSE" | "VOLUME" | "ONBUILD" | "STOPSIGNAL" | "HEALTHCHECK" | "SHELL"
            | "MAINTAINER" => {
                return Err(refuse(format!(
                    "{name} is not supported by isolab (isolab builds {SUPPORTED})"
                )));
            }
            _ => {
                return Err(refuse(format!(
                    "unknown instruction {word} (isolab builds {SUPPORTED})"
                )))
            }
        };
        if rest.is_empty() {
            return Err(refuse(format!("{name} needs arguments ({usage})")));
        }
        if name != "ARG" && name != "FROM" && !self.seen_from {
            return Err(refuse(format!(
                "{name} before FROM (a Dockerfile starts with FROM; only ARG may come before it)"
            )));
        }
        // Heredocs (`RUN <<EOF` … `EOF`) are BuildKit syntax: their body lines would otherwise
        // be read as instructions, so they are refused before anything else looks at them.
        if (name == "RUN" || name == "COPY") && exec_form(rest).is_none() && has_heredoc(rest) {
            return Err(refuse(format!("heredocs (<<EOF) are not supported: write the file into the build context and COPY it, or use printf in a {name}")));
        }
        let kind = match name.as_str() {
            "FROM" => self.from(rest).map_err(refuse)?,
            "RUN" => {
                if rest.starts_with("--") {
                    let flag = rest.split_whitespace().next().unwrap_or(rest);
                    return Err(refuse(format!(
                        "RUN {flag} is not supported (isolab's RUN takes no flags: {usage})"
                    )));
                }
                match command(rest) {
                    Command::Exec(argv) if argv.is_empty() => {
                        return Err(refuse(format!("RUN [] runs nothing ({usage})")));
                    }
                    command => Kind::Run { command },
                }
            }
            "CMD" => Kind::Cmd { command: command(rest) },
            "ENTRYPOINT" => Kind::Entrypoint { command: command(rest) },
            "COPY" => self.copy(rest, usage).map_err(refuse)?,
            "ENV" => {
                let pairs = self.name_values("ENV", rest).map_err(refuse)?;
                self.env.extend(pairs.iter().cloned());
                Kind::Env { pairs }
            }
            "LABEL" => Kind::Label { pairs: self.name_values("LABEL", rest).map_err(refuse)? },
            "WORKDIR" => Kind::Workdir { path: self.word(rest).map_err(refuse)? },
            "USER" => Kind::User { user: self.word(rest).map_err(refuse)? },
            _ => self.arg(rest, usage).map_err(refuse)?,
        };
        Ok(kind)
    }

    fn from(&mut self, rest: &str) -> Result<Kind, String> {
        if self.seen_from {
            return Err("a second FROM: multi-stage builds are not supported (build the first stage as its own image, then FROM it)".into());
        }
        let words = split_words(rest, self.escape);
        if let Some(flag) = words.iter().find(|word| word.starts_with("--")) {
            return Err(format!(
                "FROM {flag} is not supported (FROM NAME[:TAG]: isolab builds for this machine)"
            ));
        }
        // `FROM image AS name` names the stage; with one stage the name is harmless.
        let image = words[0];
        if !(words.len() == 1 || words.len() == 3 && words[1].eq_ignore_ascii_case("as")) {
            return Err(format!("FROM takes one image: FROM NAME[:TAG] [AS STAGE], not {rest}"));
        }
        let vars = self.global_args.clone();
        let image = process(image, self.escape, &vars)?;
        if image.is_empty() {
            return Err(format!(
                "FROM {} names no image once substituted (give --build-arg, or a default in ARG)",
                words[0]
            ));
        }
        self.seen_from = true;
        let image = if image.eq_ignore_ascii_case("scratch") { "scratch".into() } else { image };
        Ok(Kind::From { image })
    }

    fn copy(&mut self, rest: &str, usage: &str) -> Result<Kind, String> {
        let mut after_flags = rest;
        let mut chown = None;
        while after_flags.starts_with("--") {
            let flag = split_words(after_flags, self.escape)[0];
            after_flags = after_flags[flag.len()..].trim_start();
            match flag.split_once('=') {
                Some(("--chown", value)) if !value.is_empty() => {
                    chown = Some(self.word(value)?);
                }
                Some(("--from", _)) => {
                    return Err("COPY --from is not supported (it copies from another stage or image; multi-stage builds are not supported: copy from the build context)".into());
                }
                _ => return Err(format!("COPY {flag} is not supported ({usage})")),
            }
        }
        // The JSON form exists for paths with spaces: `COPY ["a file", "/dest/"]`.
        let paths: Vec<String> = match exec_form(after_flags) {
            Some(paths) => paths,
            None => {
                split_words(after_flags, self.escape).iter().map(|word| word.to_string()).collect()
            }
        };
        let paths = (paths.iter()).map(|path| self.word(path)).collect::<Result<Vec<_>, _>>()?;
        let Some((dest, sources)) = paths.split_last().filter(|(_, sources)| !sources.is_empty())
        else {
            return Err(format!("COPY needs a source and a destination ({usage})"));
        };
        // More than one source (or a glob) lands in a directory: the reference asks the
        // destination to say so with a trailing slash, rather than guessing.
        let many = sources.len() > 1 || sources.iter().any(|source| source.contains(['*', '?']));
        if many && !dest.ends_with('/') {
            return Err(format!("COPY with several sources (or a glob) needs a directory destination ending in /, not {dest}"));
        }
        Ok(Kind::Copy { sources: sources.to_vec(), dest: dest.clone(), chown })
    }

    /// `ENV`/`LABEL`: `NAME=VALUE …`, or the legacy `NAME VALUE` (one pair, the value is the
    /// rest of the line). Every value sees the variables as they were *before* this line:
    /// `ENV A=1 B=$A` gives B the old A (reference, "Environment replacement").
    fn name_values(&self, name: &str, rest: &str) -> Result<Vec<(String, String)>, String> {
        let words = split_words(rest, self.escape);
        if !words[0].contains('=') {
            let value = rest[words[0].len()..].trim();
            if value.is_empty() {
                return Err(format!("{name} {} has no value ({name} NAME=VALUE)", words[0]));
            }
            return Ok(vec![(words[0].to_string(), self.word(value)?)]);
        }
        let mut pairs = Vec::new();
        for word in words {
            match word.split_once('=') {
                Some((key, value)) if !key.is_empty() => {
                    pairs.push((process(key, self.escape, &BTreeMap::new())?, self.word(value)?));
                }
                _ => {
                    return Err(format!(
                        "{name} {word} is not NAME=VALUE (quote a value with spaces: NAME=\"a b\")"
                    ));
                }
            }
        }
        Ok(pairs)
    }

    fn arg(&mut self, rest: &str, usage: &str) -> Result<Kind, String> {
        let words = split_words(rest, self.escape);
        if words.len() != 1 {
            return Err(format!("one ARG per line, please ({usage})"));
        }
        let (name, default) = match words[0].split_once('=') {
            Some((name, default)) => (name.to_string(), Some(self.word(default)?)),
            None => (words[0].to_string(), None),
        };
        if name.is_empty() {
            return Err(format!("ARG needs a name ({usage})"));
        }
        // A `--build-arg` wins over the default; a bare `ARG NAME` after FROM takes the value
        // of an ARG declared before FROM. A declared ARG without any value stays unset.
        let given = self.given.get_key_value(name.as_str());
        self.used.extend(given.map(|(key, _)| *key));
        let inherited = if self.seen_from { self.global_args.get(&name).cloned() } else { None };
        let value = given.map(|(_, value)| value.to_string()).or(default.clone()).or(inherited);
        let scope = if self.seen_from { &mut self.stage_args } else { &mut self.global_args };
        if let Some(value) = value {
            scope.insert(name.clone(), value);
        }
        Ok(Kind::Arg { name, default })
    }

    /// One word with variables substituted: ARGs in scope, overridden by ENV.
    fn word(&self, word: &str) -> Result<String, String> {
        let mut vars = self.stage_args.clone();
        vars.extend(self.env.iter().map(|(key, value)| (key.clone(), value.clone())));
        process(word, self.escape, &vars)
    }
}

/// The JSON exec form, when `rest` is a JSON array of strings; anything else (even a broken
/// array) is shell form, as in docker.
fn exec_form(rest: &str) -> Option<Vec<String>> {
    rest.starts_with('[').then(|| serde_json::from_str(rest).ok()).flatten()
}

fn command(rest: &str) -> Command {
    exec_form(rest).map_or_else(|| Command::Shell(rest.to_string()), Command::Exec)
}

/// `<<WORD`, `<<-WORD`, `<<"WORD"`: a heredoc's start (not `<<<`, bash's here-string).
fn has_heredoc(rest: &str) -> bool {
    rest.match_indices("<<").any(|(at, _)| {
        let after = rest[at + 2..].trim_start_matches('-').trim_start_matches(['"', '\'']);
        after.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && !rest[..at].ends_with('<')
    })
}

/// Splits on whitespace outside quotes (an escaped character never splits), keeping each word
/// as written: variables are substituted per word afterwards, so a value with spaces stays one
/// word.
fn split_words(text: &str, escape: char) -> Vec<&str> {
    let mut words = Vec::new();
    let (mut start, mut quote, mut escaped) = (None, None, false);
    for (at, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == escape && quote != Some('\'') {
            escaped = true;
        } else if Some(c) == quote {
            quote = None;
        } else if quote.is_none() && (c == '"' || c == '\'') {
            quote = Some(c);
        } else if quote.is_none() && c.is_whitespace() {
            words.extend(start.take().map(|from| &text[from..at]));
            continue;
        }
        start.get_or_insert(at);
    }
    words.extend(start.map(|from| &text[from..]));
    words
}

/// Docker's word processing (BuildKit's `shell.Lex`): quotes removed, the escape character
/// taken literally, and `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
/// `${VAR:+alternative}`, `${VAR+alternative}` substituted from `vars`. Single quotes keep
/// everything literal; double quotes allow substitution.
fn process(word: &str, escape: char, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut lexer = Lexer { chars: word.chars().collect(), at: 0, escape, vars, depth: 0 };
    let processed = lexer.until(None)?;
    Ok(processed)
}

struct Lexer<'a> {
    chars: Vec<char>,
    at: usize,
    escape: char,
    vars: &'a BTreeMap<String, String>,
    /// How many `${…}` we are inside: bounded, so that a hostile nesting cannot exhaust the
    /// stack.
    depth: usize,
}

/// The deepest `${A:-${B:-…}}` nesting taken (real Dockerfiles nest two or three).
const NESTING_MAX: usize = 16;

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek();
        self.at += c.is_some() as usize;
        c
    }

    /// Reads to the end, or to `stop` (left unread).
    fn until(&mut self, stop: Option<char>) -> Result<String, String> {
        let mut out = String::new();
        while let Some(c) = self.peek().filter(|c| Some(*c) != stop) {
            self.at += 1;
            match c {
                '\'' => loop {
                    match self.bump() {
                        Some('\'') => break,
                        Some(c) => out.push(c),
                        None => return Err("a single quote is not closed".into()),
                    }
                },
                '"' => loop {
                    match self.bump() {
                        Some('"') => break,
                        Some('$') => out.push_str(&self.variable()?),
                        // In double quotes the escape character escapes only `"`, `$` and
                        // itself; before anything else it is kept.
                        Some(c) if c == self.escape => match self.peek() {
                            Some(next) if next == '"' || next == '$' || next == self.escape => {
                                out.push(next);
                                self.at += 1;
                            }
                            _ => out.push(c),
                        },
                        Some(c) => out.push(c),
                        None => return Err("a double quote is not closed".into()),
                    }
                },
                '$' => out.push_str(&self.variable()?),
                c if c == self.escape => out.push(self.bump().unwrap_or(c)),
                c => out.push(c),
            }
        }
        Ok(out)
    }

    fn name(&mut self) -> String {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            self.at += 1;
        }
        self.chars[start..self.at].iter().collect()
    }

    /// After a `$`.
    fn variable(&mut self) -> Result<String, String> {
        let braced = self.peek() == Some('{');
        if !braced && !self.peek().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') {
            return Ok("$".into());
        }
        self.at += braced as usize;
        let name = self.name();
        let value = self.vars.get(&name);
        if !braced {
            return Ok(value.cloned().unwrap_or_default());
        }
        let unsupported = || {
            format!("unsupported substitution ${{{name}…}} (isolab knows $VAR, ${{VAR}}, ${{VAR:-DEFAULT}} and ${{VAR:+ALTERNATIVE}})")
        };
        if name.is_empty() {
            return Err(unsupported());
        }
        let colon = self.peek() == Some(':');
        self.at += colon as usize;
        let operator = self.bump();
        if operator == Some('}') && !colon {
            return Ok(value.cloned().unwrap_or_default());
        }
        if self.depth == NESTING_MAX {
            return Err(format!("substitutions nest deeper than {NESTING_MAX} levels"));
        }
        self.depth += 1;
        let word = self.until(Some('}'));
        self.depth -= 1;
        let word = word?;
        if self.bump() != Some('}') {
            return Err(format!("${{{name} is not closed with }}"));
        }
        // With the colon an empty value counts as unset (`${A:-x}`), without it only an unset
        // one does (`${A-x}`): POSIX sh's rule, which the reference follows.
        let set = value.is_some_and(|value| !(colon && value.is_empty()));
        match operator {
            Some('-') if set => Ok(value.cloned().unwrap_or_default()),
            Some('-') => Ok(word),
            Some('+') if set => Ok(word),
            Some('+') => Ok(String::new()),
            _ => Err(unsupported()),
        }
    }
}

/// The build cache's key for one step: SHA-256 over the parent image's config digest (or
/// `scratch`), the instruction after substitution, the ARG values a `RUN` sees, and a `COPY`'s
/// source digest. The encoding is JSON, which quotes every string: no two different inputs
/// encode the same.
pub fn cache_key(parent: &str, instruction: &Instruction, copy_sources: Option<&Digest>) -> Digest {
    #[derive(Serialize)]
    struct Key<'a> {
        scheme: &'static str,
        parent: &'a str,
        kind: &'a Kind,
        build_args: &'a [(String, String)],
        copy_sources: Option<String>,
    }
    // Only a RUN sees the ARGs (in its environment); every other kind already carries their
    // values, substituted.
    let build_args = match instruction.kind {
        Kind::Run { .. } => &instruction.build_args[..],
        _ => &[],
    };
    let key = Key {
        scheme: "isolab-build-cache-v1",
        parent,
        kind: &instruction.kind,
        build_args,
        copy_sources: copy_sources.map(Digest::to_string),
    };
    Digest::of(&serde_json::to_vec(&key).expect("strings and lists always serialize"))
}

impl Dockerfile {
    /// [`copy_sources_digest`] of a `COPY` instruction (`None` for other kinds), its refusals
    /// prefixed with this file and the instruction's line.
    pub fn copy_sources_digest(
        &self,
        instruction: &Instruction,
        context: &Path,
    ) -> Result<Option<Digest>> {
        let Kind::Copy { sources, .. } = &instruction.kind else { return Ok(None) };
        match copy_sources_digest(context, sources) {
            Err(Error::Invalid(what)) => Err(refuse(&self.path, instruction.line, what)),
            other => other.map(Some),
        }
    }
}

/// The files (or directories) under `context` that COPY `sources` name, in order, glob
/// matches sorted; each as its path inside the context, with the build context's own path
/// before it. Refuses what escapes the context: `..` above it, or a symlink on the way that
/// leads outside (a symlink *inside* a copied directory is copied as a link, never followed,
/// so its target does not matter).
pub fn resolve_copy_sources(context: &Path, sources: &[String]) -> Result<Vec<PathBuf>> {
    let root = fs::canonicalize(context).map_err(|error| Error::io("realpath", context, &error))?;
    let mut resolved = Vec::new();
    for source in sources {
        let outside = || {
            Error::Invalid(format!("COPY source {source} is outside the build context {} (sources are paths inside it: move the file there)", context.display()))
        };
        // A source is always relative to the context, even when written `/x` (reference).
        let mut inside = PathBuf::new();
        for component in Path::new(source).components() {
            match component {
                Component::Normal(part) => inside.push(part),
                Component::ParentDir if inside.pop() => {}
                Component::ParentDir => return Err(outside()),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
        let name = inside.file_name().map(|name| name.to_string_lossy().into_owned());
        let candidates = match name.filter(|name| name.contains(['*', '?'])) {
            Some(pattern) => {
                let parent = root.join(inside.parent().unwrap_or(Path::new("")));
                let mut names: Vec<_> = fs::read_dir(&parent)
                    .map_err(|error| Error::io("opendir", &parent, &error))?
                    .filter_map(|entry| entry.ok().map(|entry| entry.file_name()))
                    .filter(|name| glob_match(pattern.as_bytes(), name.as_bytes()))
                    .collect();
                names.sort();
                if names.is_empty() {
                    return Err(Error::Invalid(format!(
                        "COPY source {source} matches nothing in the build context {}",
                        context.display()
                    )));
                }
                names.into_iter().map(|name| parent.join(name)).collect()
            }
            None => vec![root.join(&inside)],
        };
        for candidate in candidates {
            // Following every symlink on the way (the source itself included) must stay inside.
            let real = match fs::canonicalize(&candidate) {
                Ok(real) => real,
                Err(error)
                    if error.kind() == io::ErrorKind::NotFound
                        && candidate.symlink_metadata().is_err() =>
                {
                    return Err(Error::Invalid(format!(
                        "COPY source {source} is not in the build context {}",
                        context.display()
                    )));
                }
                Err(error) => return Err(Error::io("realpath", &candidate, &error)),
            };
            if !real.starts_with(&root) {
                return Err(Error::Invalid(format!("COPY source {source} leads outside the build context {} through a symlink (copy the file itself into the context)", context.display())));
            }
            resolved.push(real);
        }
    }
    Ok(resolved)
}

/// `*` (any run of characters) and `?` (one), on bytes. One pass over the name per pattern
/// byte (`matched[j]`: the pattern so far matches the name's first `j` bytes), so that a
/// pattern like `*a*a*a*b` costs its length times the name's, never an exponential search.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let mut matched = vec![false; name.len() + 1];
    matched[0] = true;
    for &p in pattern {
        let mut next = vec![false; name.len() + 1];
        match p {
            b'*' => {
                // A star matches the empty run, or one more byte after a match.
                let mut any = false;
                for j in 0..=name.len() {
                    any |= matched[j];
                    next[j] = any;
                }
            }
            _ => {
                for j in 0..name.len() {
                    next[j + 1] = matched[j] && (p == b'?' || p == name[j]);
                }
            }
        }
        matched = next;
    }
    matched[name.len()]
}

/// The content digest of COPY `sources` under `context`: what a COPY would put in the image,
/// and nothing else. Each source contributes its path in the context, then a sorted walk:
/// for every entry its path, type and permission bits, and a file's content digest, a
/// symlink's target, a device's number. Modification times and owners are left out (COPY sets
/// the owner; a `touch` changes nothing the image holds), so they do not break the cache.
pub fn copy_sources_digest(context: &Path, sources: &[String]) -> Result<Digest> {
    let root = fs::canonicalize(context).map_err(|error| Error::io("realpath", context, &error))?;
    let mut encoding = Vec::new();
    for source in resolve_copy_sources(context, sources)? {
        field(&mut encoding, b"source");
        field(&mut encoding, source.strip_prefix(&root).unwrap_or(&source).as_os_str().as_bytes());
        walk(&source, Path::new(""), &mut encoding)?;
    }
    Ok(Digest::of(&encoding))
}

/// Appends `bytes` with its length first: fields never run into each other.
fn field(encoding: &mut Vec<u8>, bytes: &[u8]) {
    encoding.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    encoding.extend_from_slice(bytes);
}

fn walk(path: &Path, relative: &Path, encoding: &mut Vec<u8>) -> Result<()> {
    let metadata = fs::symlink_metadata(path).map_err(|error| Error::io("lstat", path, &error))?;
    let file_type = metadata.file_type();
    field(encoding, relative.as_os_str().as_bytes());
    field(encoding, format!("{:o}", metadata.mode() & 0o7777).as_bytes());
    if file_type.is_file() {
        let mut file = File::open(path).map_err(|error| Error::io("open", path, &error))?;
        let mut hasher = DigestWriter::new(io::sink());
        io::copy(&mut file, &mut hasher).map_err(|error| Error::io("read", path, &error))?;
        field(encoding, b"file");
        field(encoding, &hasher.finish().1 .0);
    } else if file_type.is_symlink() {
        let target = fs::read_link(path).map_err(|error| Error::io("readlink", path, &error))?;
        field(encoding, b"symlink");
        field(encoding, target.as_os_str().as_bytes());
    } else if file_type.is_dir() {
        field(encoding, b"dir");
        let mut names: Vec<_> = fs::read_dir(path)
            .map_err(|error| Error::io("opendir", path, &error))?
            .map(|entry| entry.map(|entry| entry.file_name()))
            .collect::<io::Result<_>>()
            .map_err(|error| Error::io("readdir", path, &error))?;
        names.sort();
        for name in names {
            walk(&path.join(&name), &relative.join(&name), encoding)?;
        }
        field(encoding, b"end");
    } else {
        let kind = match () {
            _ if file_type.is_fifo() => "fifo",
            _ if file_type.is_socket() => "socket",
            _ if file_type.is_char_device() => "char",
            _ => "block",
        };
        field(encoding, kind.as_bytes());
        field(encoding, &metadata.rdev().to_le_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Regression (a hostile Dockerfile): a glob of many stars took exponential time, and a
    // deep `${A:-${A:-…}}` overflowed the stack.
    #[test]
    fn hostile_globs_are_cheap_and_deep_nesting_is_refused() {
        let started = std::time::Instant::now();
        assert!(!glob_match(b"*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b", &[b'a'; 60]));
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(glob_match(b"a*b?c", b"axxbyc") && glob_match(b"*", b"") && !glob_match(b"?", b""));
        let deep =
            format!("FROM scratch\nENV X={}x{}\n", "${A:-".repeat(100_000), "}".repeat(100_000));
        let error = parse(Path::new("Dockerfile"), &deep, &[]).unwrap_err().to_string();
        assert!(
            error.starts_with("Dockerfile:2: ") && error.contains("nest deeper than 16"),
            "{error}"
        );
    }

    fn parse_ok(text: &str, build_args: &[(&str, &str)]) -> Dockerfile {
        let build_args: Vec<(String, String)> =
            build_args.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        parse(Path::new("Dockerfile"), text, &build_args).unwrap()
    }

    fn kinds(text: &str, build_args: &[(&str, &str)]) -> Vec<Kind> {
        parse_ok(text, build_args).instructions.into_iter().map(|i| i.kind).collect()
    }

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| word.to_string()).collect()
    }

    fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
    }

    #[test]
    fn malformed_dockerfiles_are_refused_with_file_line_and_the_fix() {
        let table: &[(&str, &str)] = &[
            ("FROM scratch\n\nEXPOSEE 80\n", "Dockerfile:3: unknown instruction EXPOSEE (isolab builds FROM, RUN, COPY, ENV, WORKDIR, USER, CMD, ENTRYPOINT, LABEL, ARG)"),
            ("FROM scratch\nEXPOSE 80\n", "Dockerfile:2: EXPOSE is not supported by isolab (isolab builds FROM, RUN, COPY, ENV, WORKDIR, USER, CMD, ENTRYPOINT, LABEL, ARG)"),
            ("# a comment\nRUN true\n", "Dockerfile:2: RUN before FROM (a Dockerfile starts with FROM; only ARG may come before it)"),
            ("FROM scratch\nRUN\n", "Dockerfile:2: RUN needs arguments (RUN COMMAND, or RUN [\"EXECUTABLE\", \"ARG\", …])"),
            ("FROM scratch\nCOPY a\n", "Dockerfile:2: COPY needs a source and a destination (COPY [--chown=USER[:GROUP]] SOURCE… DEST)"),
            ("FROM scratch\nFROM scratch\n", "Dockerfile:2: a second FROM: multi-stage builds are not supported (build the first stage as its own image, then FROM it)"),
            ("FROM scratch\nRUN <<EOF\necho hi\nEOF\n", "Dockerfile:2: heredocs (<<EOF) are not supported: write the file into the build context and COPY it, or use printf in a RUN"),
            ("FROM scratch\nADD https://x/y.tgz /\n", "Dockerfile:2: ADD is not supported: use COPY (ADD's URLs and automatic extraction of archives are not supported)"),
            ("FROM scratch\nCOPY --from=build /a /b\n", "Dockerfile:2: COPY --from is not supported (it copies from another stage or image; multi-stage builds are not supported: copy from the build context)"),
            ("FROM scratch\nRUN echo a \\\n  b \\\n", "Dockerfile:2: the instruction continues past the end of the file (its last line ends in \\: remove it, or finish the instruction)"),
            ("# only a comment\n", "Dockerfile:1: no FROM (a Dockerfile starts with FROM scratch or FROM NAME:TAG)"),
            ("FROM scratch\nENV A=1 B\n", "Dockerfile:2: ENV B is not NAME=VALUE (quote a value with spaces: NAME=\"a b\")"),
            ("FROM scratch\nENV A\n", "Dockerfile:2: ENV A has no value (ENV NAME=VALUE)"),
            ("FROM scratch\nCOPY a b /dest\n", "Dockerfile:2: COPY with several sources (or a glob) needs a directory destination ending in /, not /dest"),
            ("FROM scratch\nRUN --mount=type=cache,target=/x make\n", "Dockerfile:2: RUN --mount=type=cache,target=/x is not supported (isolab's RUN takes no flags: RUN COMMAND, or RUN [\"EXECUTABLE\", \"ARG\", …])"),
            ("FROM scratch\nWORKDIR \"/a\n", "Dockerfile:2: a double quote is not closed"),
            ("FROM scratch\nWORKDIR ${A:?x}\n", "Dockerfile:2: unsupported substitution ${A…} (isolab knows $VAR, ${VAR}, ${VAR:-DEFAULT} and ${VAR:+ALTERNATIVE})"),
            ("ARG BASE\nFROM $BASE\n", "Dockerfile:2: FROM $BASE names no image once substituted (give --build-arg, or a default in ARG)"),
            ("FROM --platform=linux/arm64 alpine\n", "Dockerfile:1: FROM --platform=linux/arm64 is not supported (FROM NAME[:TAG]: isolab builds for this machine)"),
            ("# escape=x\nFROM scratch\n", "Dockerfile:1: escape=x is not an escape character (use \\ or `)"),
        ];
        for (text, expected) in table {
            let error = parse(Path::new("Dockerfile"), text, &[]).unwrap_err();
            assert_eq!(error.to_string(), *expected, "for {text:?}");
        }
    }

    #[test]
    fn continuations_join_lines_and_skip_comments_inside() {
        let dockerfile = parse_ok(
            "FROM scratch\n\nRUN apk add \\\n# a comment inside\n\n    curl \\\n    git\nCMD [\"sh\"]\n",
            &[],
        );
        let run = &dockerfile.instructions[1];
        assert_eq!(run.line, 3);
        assert_eq!(run.text, "RUN apk add     curl     git");
        assert_eq!(
            run.kind,
            Kind::Run { command: Command::Shell("apk add     curl     git".into()) }
        );
        assert_eq!(dockerfile.instructions[2].line, 8);
    }

    #[test]
    fn escape_directive_makes_backtick_the_continuation() {
        let text = "# syntax=docker/dockerfile:1\n# escape=`\nFROM scratch\nRUN echo \\a `\n  b\nWORKDIR C:`\\x\n";
        let kinds = kinds(text, &[]);
        assert_eq!(kinds[1], Kind::Run { command: Command::Shell("echo \\a   b".into()) });
        assert_eq!(kinds[2], Kind::Workdir { path: "C:\\x".into() });
    }

    #[test]
    fn instruction_names_are_case_insensitive_and_json_falls_back_to_shell() {
        let kinds = kinds(
            "from scratch\nrun [\"echo\", \"a b\"]\nCMD ['single', 'quotes']\nEntryPoint [\"sh\",\n",
            &[],
        );
        assert_eq!(kinds[1], Kind::Run { command: Command::Exec(strings(&["echo", "a b"])) });
        // Single quotes are not JSON: docker runs it through the shell, and so do we.
        let shell = Command::Shell("['single', 'quotes']".into());
        assert_eq!(shell.argv(), strings(&["/bin/sh", "-c", "['single', 'quotes']"]));
        assert_eq!(kinds[2], Kind::Cmd { command: shell });
        assert_eq!(kinds[3], Kind::Entrypoint { command: Command::Shell("[\"sh\",".into()) });
    }

    #[test]
    fn env_forms_and_quotes() {
        let kinds = kinds(
            "FROM scratch\nENV A=1 B=\"v 2\" C='$A' D=a\\ b\nENV LEGACY hello  world\nLABEL x.y=\"z\"\n",
            &[],
        );
        assert_eq!(
            kinds[1],
            Kind::Env { pairs: pairs(&[("A", "1"), ("B", "v 2"), ("C", "$A"), ("D", "a b")]) }
        );
        assert_eq!(kinds[2], Kind::Env { pairs: pairs(&[("LEGACY", "hello  world")]) });
        assert_eq!(kinds[3], Kind::Label { pairs: pairs(&[("x.y", "z")]) });
    }

    #[test]
    fn args_and_env_are_substituted_with_their_scopes_and_defaults() {
        let text = "\
ARG BASE=busybox
ARG TAG
FROM ${BASE}:${TAG:-latest}
ARG BASE
ARG DIR=/srv
ARG UNSET
ENV HOME=$DIR/home A=x
ENV B=$A C=${UNSET:-fallback} D=${UNSET-dash} E=${DIR:+set} F=\\$DIR G=\"$DIR\"
WORKDIR $HOME/${BASE}
USER ${WHO:-nobody}
COPY --chown=${WHO:-1000} app $DIR/
RUN echo $DIR
";
        let dockerfile = parse_ok(text, &[("TAG", "1.36"), ("DIR", "/opt"), ("NOBODY", "x")]);
        let kinds: Vec<_> = dockerfile.instructions.iter().map(|i| i.kind.clone()).collect();
        assert_eq!(kinds[2], Kind::From { image: "busybox:1.36".into() });
        assert_eq!(kinds[4], Kind::Arg { name: "DIR".into(), default: Some("/srv".into()) });
        assert_eq!(kinds[6], Kind::Env { pairs: pairs(&[("HOME", "/opt/home"), ("A", "x")]) });
        assert_eq!(
            kinds[7],
            Kind::Env {
                pairs: pairs(&[
                    ("B", "x"),
                    ("C", "fallback"),
                    ("D", "dash"),
                    ("E", "set"),
                    ("F", "$DIR"),
                    ("G", "/opt")
                ])
            }
        );
        // The bare `ARG BASE` after FROM took the value declared before FROM.
        assert_eq!(kinds[8], Kind::Workdir { path: "/opt/home/busybox".into() });
        assert_eq!(kinds[9], Kind::User { user: "nobody".into() });
        assert_eq!(
            kinds[10],
            Kind::Copy {
                sources: strings(&["app"]),
                dest: "/opt/".into(),
                chown: Some("1000".into())
            }
        );
        // RUN is left to the shell; the builder exports the ARGs in scope.
        assert_eq!(kinds[11], Kind::Run { command: Command::Shell("echo $DIR".into()) });
        assert_eq!(
            dockerfile.instructions[11].build_args,
            pairs(&[("BASE", "busybox"), ("DIR", "/opt")])
        );
        assert_eq!(dockerfile.unused_build_args, strings(&["NOBODY"]));
    }

    #[test]
    fn env_values_see_the_variables_from_before_their_line() {
        let kinds = kinds("FROM scratch\nENV A=old\nENV A=new B=$A\n", &[]);
        assert_eq!(kinds[2], Kind::Env { pairs: pairs(&[("A", "new"), ("B", "old")]) });
    }

    #[test]
    fn copy_json_form_and_globs() {
        let kinds = kinds("FROM scratch\nCOPY [\"a file\", \"*.txt\", \"/dest dir/\"]\n", &[]);
        assert_eq!(
            kinds[1],
            Kind::Copy {
                sources: strings(&["a file", "*.txt"]),
                dest: "/dest dir/".into(),
                chown: None
            }
        );
        assert!(glob_match(b"*.txt", b"a.txt"));
        assert!(glob_match(b"a?c*", b"abcdef"));
        assert!(!glob_match(b"*.txt", b"a.txt.bak"));
        assert!(!glob_match(b"?", b""));
    }

    #[test]
    fn cache_key_is_stable_and_sees_every_change() {
        let key = |text: &str, parent: &str, copy: Option<&Digest>, args: &[(&str, &str)]| {
            let dockerfile = parse_ok(text, args);
            cache_key(parent, dockerfile.instructions.last().unwrap(), copy)
        };
        let run = "FROM scratch\nARG V=1\nRUN make\n";
        let base = key(run, "scratch", None, &[]);
        assert_eq!(base, key(run, "scratch", None, &[]));
        assert_ne!(base, key("FROM scratch\nARG V=1\nRUN makf\n", "scratch", None, &[]));
        assert_ne!(base, key(run, "sha256:00", None, &[]));
        // A RUN sees its ARGs in the environment: another value, another result.
        assert_ne!(base, key(run, "scratch", None, &[("V", "2")]));
        let copy = "FROM scratch\nCOPY a /b\n";
        let one = Digest::of(b"one");
        let copied = key(copy, "scratch", Some(&one), &[]);
        assert_eq!(copied, key(copy, "scratch", Some(&one), &[]));
        assert_ne!(copied, key(copy, "scratch", Some(&Digest::of(b"onf")), &[]));
        assert_ne!(copied, key("FROM scratch\nCOPY a /c\n", "scratch", Some(&one), &[]));
        // ENV's substituted value is in the key, not the `$V` as written.
        let env = "FROM scratch\nARG V=1\nENV X=$V\n";
        assert_ne!(key(env, "scratch", None, &[]), key(env, "scratch", None, &[("V", "2")]));
    }

    fn context() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("app")).unwrap();
        fs::write(dir.path().join("app/main.sh"), "echo hi\n").unwrap();
        std::os::unix::fs::symlink("main.sh", dir.path().join("app/link")).unwrap();
        fs::write(dir.path().join("a.txt"), "a").unwrap();
        fs::write(dir.path().join("b.txt"), "b").unwrap();
        dir
    }

    #[test]
    fn copy_sources_digest_ignores_mtime_but_sees_modes_and_bytes() {
        let dir = context();
        let sources = strings(&["app", "*.txt"]);
        let before = copy_sources_digest(dir.path(), &sources).unwrap();
        let file = File::options().write(true).open(dir.path().join("app/main.sh")).unwrap();
        file.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(copy_sources_digest(dir.path(), &sources).unwrap(), before);
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.path().join("app/main.sh"), fs::Permissions::from_mode(0o755))
            .unwrap();
        let chmodded = copy_sources_digest(dir.path(), &sources).unwrap();
        assert_ne!(chmodded, before);
        fs::write(dir.path().join("b.txt"), "c").unwrap();
        assert_ne!(copy_sources_digest(dir.path(), &sources).unwrap(), chmodded);
        // Order matters (it is the order of the copy), and so does what a glob matches.
        let resolved = resolve_copy_sources(dir.path(), &strings(&["/./app/../*.txt"])).unwrap();
        let names: Vec<_> = resolved.iter().map(|path| path.file_name().unwrap()).collect();
        assert_eq!(names, ["a.txt", "b.txt"]);
    }

    #[test]
    fn copy_sources_outside_the_context_are_refused() {
        let dir = context();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
        let refused = |source: &str| {
            copy_sources_digest(dir.path(), &strings(&[source])).unwrap_err().to_string()
        };
        let shown = dir.path().display();
        assert_eq!(
            refused("../x"),
            format!("COPY source ../x is outside the build context {shown} (sources are paths inside it: move the file there)")
        );
        assert_eq!(
            refused("escape"),
            format!("COPY source escape leads outside the build context {shown} through a symlink (copy the file itself into the context)")
        );
        assert_eq!(
            refused("missing"),
            format!("COPY source missing is not in the build context {shown}")
        );
        assert_eq!(
            refused("*.md"),
            format!("COPY source *.md matches nothing in the build context {shown}")
        );
        // Through the Dockerfile, the refusal names the file and the line.
        let dockerfile = parse_ok("FROM scratch\n\nCOPY ../x /x\n", &[]);
        let error = (dockerfile.copy_sources_digest(&dockerfile.instructions[1], dir.path()))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("Dockerfile:3: COPY source ../x is outside"), "{error}");
    }
}
