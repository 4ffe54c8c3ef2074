//! Dockerfiles, parsed (by the `parse-dockerfile` crate) and checked into
//! what the builder executes: stages of [`Step`]s, each with its line
//! number and its text as `Step N/M :` shows it. Pure: no files, no store.
//!
//! What is refused here, with the line number: unknown instructions,
//! flags an instruction does not take (BuildKit's `RUN --mount` among
//! them), heredocs, malformed JSON forms where only JSON is allowed,
//! Dockerfiles over [`MAX_DOCKERFILE`] bytes or [`MAX_INSTRUCTIONS`]
//! instructions, text that is not UTF-8.

use parse_dockerfile as pd;

/// Largest Dockerfile accepted, in bytes.
pub const MAX_DOCKERFILE: usize = 1 << 20;
/// Most instructions accepted in one Dockerfile.
pub const MAX_INSTRUCTIONS: usize = 4096;

/// A Dockerfile that cannot be built as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number (0: the whole file).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// RUN, CMD and ENTRYPOINT's two forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `["prog", "arg"]`.
    Exec(Vec<String>),
    /// `prog arg`, for the shell (line continuations joined).
    Shell(String),
}

/// COPY and ADD.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopySpec {
    /// ADD (local tar archives are extracted; URLs are refused).
    pub add: bool,
    /// `--from=STAGE|IMAGE`.
    pub from: Option<String>,
    /// `--chown=USER[:GROUP]`.
    pub chown: Option<String>,
    /// `--chmod=OCTAL`.
    pub chmod: Option<String>,
    /// The sources, unexpanded.
    pub sources: Vec<String>,
    /// The destination, unexpanded.
    pub dest: String,
}

/// HEALTHCHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`.
    None,
    /// `HEALTHCHECK [--interval=D --timeout=D --start-period=D
    /// --start-interval=D --retries=N] CMD ...`.
    Cmd {
        /// The test.
        command: Command,
        /// Durations in nanoseconds, and retries, as given.
        interval: Option<u64>,
        /// Timeout, nanoseconds.
        timeout: Option<u64>,
        /// Start period, nanoseconds.
        start_period: Option<u64>,
        /// Start interval, nanoseconds.
        start_interval: Option<u64>,
        /// Retries.
        retries: Option<u64>,
    },
}

/// One instruction, its arguments not yet expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    /// `FROM image [AS name]`.
    From {
        /// The image (or `scratch`, or an earlier stage's name).
        image: String,
        /// `AS name`, lowercased as Docker does.
        name: Option<String>,
    },
    /// `RUN`.
    Run(Command),
    /// `COPY` and `ADD`.
    Copy(CopySpec),
    /// `ENV` (raw arguments).
    Env(String),
    /// `ARG` (raw arguments).
    Arg(String),
    /// `LABEL` (raw arguments).
    Label(String),
    /// `WORKDIR`.
    Workdir(String),
    /// `USER`.
    User(String),
    /// `CMD`.
    Cmd(Command),
    /// `ENTRYPOINT`.
    Entrypoint(Command),
    /// `EXPOSE` (raw words).
    Expose(Vec<String>),
    /// `VOLUME` (raw words, or the JSON array's strings).
    Volume(Vec<String>),
    /// `STOPSIGNAL`.
    StopSignal(String),
    /// `SHELL ["prog", "arg"]`.
    Shell(Vec<String>),
    /// `HEALTHCHECK`.
    Healthcheck(Healthcheck),
    /// `ONBUILD INSTRUCTION` (its text, recorded in the config).
    Onbuild(String),
    /// `MAINTAINER` (the config's author).
    Maintainer(String),
}

/// An instruction where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-based line of its keyword.
    pub line: usize,
    /// The instruction as written, continuation lines joined.
    pub text: String,
    /// What it does.
    pub instruction: Instruction,
}

/// A build stage: a FROM and the steps after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// Its position (`COPY --from=0`).
    pub index: usize,
    /// `AS name`.
    pub name: Option<String>,
    /// The FROM step.
    pub from: Step,
    /// The image it starts from, unexpanded.
    pub base: String,
    /// The steps after FROM.
    pub steps: Vec<Step>,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The escape character (`# escape=`; default `\`).
    pub escape: char,
    /// ARGs before the first FROM (usable in FROM lines).
    pub global_args: Vec<Step>,
    /// The stages, in order.
    pub stages: Vec<Stage>,
}

impl Dockerfile {
    /// The stage named `name` (case-insensitive) or numbered so.
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        let lower = name.to_ascii_lowercase();
        self.stages
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
            .or_else(|| name.parse::<usize>().ok().and_then(|i| self.stages.get(i)))
    }
}

/// The 1-based line of byte offset `pos`.
fn line_of(text: &str, pos: usize) -> usize {
    text.as_bytes()[..pos.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Joins continuation lines as Docker does: `escape` at a line's end (before
/// optional whitespace) joins the next line; comment and empty lines inside
/// an instruction are dropped. Stops after the first line that does not
/// continue.
pub fn join_continuations(raw: &str, escape: char) -> String {
    let mut out = String::new();
    for (i, line) in raw.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let t = line.trim_start();
        if i > 0 && (t.starts_with('#') || t.is_empty()) {
            continue;
        }
        let end = line.trim_end();
        match end.strip_suffix(escape) {
            Some(head) => out.push_str(head),
            None => {
                out.push_str(line);
                break;
            }
        }
    }
    out.trim().to_string()
}

fn err(line: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        line,
        message: message.into(),
    }
}

/// Parses and checks a Dockerfile.
pub fn parse(bytes: &[u8]) -> Result<Dockerfile, ParseError> {
    if bytes.len() > MAX_DOCKERFILE {
        return Err(err(
            0,
            format!(
                "the Dockerfile is {} bytes, more than the {MAX_DOCKERFILE} husk accepts",
                bytes.len()
            ),
        ));
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let at = e.valid_up_to();
        err(
            line_of(&String::from_utf8_lossy(&bytes[..at]), at),
            "the Dockerfile is not UTF-8 text",
        )
    })?;
    let df = pd::parse(text).map_err(|e| {
        // Its message ends "at line L column C"; ours leads with the line.
        let msg = e.to_string();
        let msg = msg
            .rsplit_once(" at line ")
            .map_or(msg.as_str(), |(m, _)| m)
            .to_string();
        err(e.line(), msg)
    })?;
    if df.instructions.len() > MAX_INSTRUCTIONS {
        return Err(err(
            0,
            format!(
                "the Dockerfile has {} instructions, more than the {MAX_INSTRUCTIONS} husk accepts",
                df.instructions.len()
            ),
        ));
    }
    let escape = df
        .parser_directives
        .escape
        .as_ref()
        .map_or('\\', |d| d.value.value);
    let starts: Vec<usize> = df
        .instructions
        .iter()
        .map(|i| keyword_span(i).start)
        .collect();
    let mut out = Dockerfile {
        escape,
        global_args: Vec::new(),
        stages: Vec::new(),
    };
    for (n, ins) in df.instructions.iter().enumerate() {
        let start = starts[n];
        let end = starts.get(n + 1).copied().unwrap_or(text.len());
        let line = line_of(text, start);
        let step = Step {
            line,
            text: join_continuations(&text[start..end], escape),
            instruction: convert(ins, text, escape, line)?,
        };
        match (&step.instruction, out.stages.last_mut()) {
            (Instruction::From { image, name }, _) => {
                if let Some(n) = name
                    && (n.is_empty()
                        || !n
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                        || !n.as_bytes()[0].is_ascii_alphabetic())
                {
                    return Err(err(line, format!("invalid stage name {n:?}")));
                }
                out.stages.push(Stage {
                    index: out.stages.len(),
                    name: name.clone(),
                    base: image.clone(),
                    from: step.clone(),
                    steps: Vec::new(),
                });
            }
            (Instruction::Arg(_), None) => out.global_args.push(step),
            (_, Some(stage)) => stage.steps.push(step),
            (_, None) => return Err(err(line, "expected FROM")),
        }
    }
    Ok(out)
}

fn keyword_span(i: &pd::Instruction<'_>) -> std::ops::Range<usize> {
    use pd::Instruction as I;
    match i {
        I::Add(x) => x.add.span.clone(),
        I::Arg(x) => x.arg.span.clone(),
        I::Cmd(x) => x.cmd.span.clone(),
        I::Copy(x) => x.copy.span.clone(),
        I::Entrypoint(x) => x.entrypoint.span.clone(),
        I::Env(x) => x.env.span.clone(),
        I::Expose(x) => x.expose.span.clone(),
        I::From(x) => x.from.span.clone(),
        I::Healthcheck(x) => x.healthcheck.span.clone(),
        I::Label(x) => x.label.span.clone(),
        I::Maintainer(x) => x.maintainer.span.clone(),
        I::Onbuild(x) => x.onbuild.span.clone(),
        I::Run(x) => x.run.span.clone(),
        I::Shell(x) => x.shell.span.clone(),
        I::Stopsignal(x) => x.stopsignal.span.clone(),
        I::User(x) => x.user.span.clone(),
        I::Volume(x) => x.volume.span.clone(),
        I::Workdir(x) => x.workdir.span.clone(),
        // The crate's enum is non-exhaustive; what it may add later is
        // refused by `convert`.
        _ => 0..0,
    }
}

/// Refuses any flag not in `allowed`; returns the allowed ones given.
fn flags<'a, 'b: 'a>(
    keyword: &str,
    given: impl IntoIterator<Item = &'a pd::Flag<'b>>,
    allowed: &[&str],
    line: usize,
) -> Result<Vec<(String, Option<String>)>, ParseError> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for f in given {
        let name = f.name.value.to_string();
        if !allowed.contains(&name.as_str()) {
            let hint = match (keyword, name.as_str()) {
                ("RUN", "mount" | "network" | "security") => {
                    " (a BuildKit extension husk does not support)"
                }
                _ => "",
            };
            return Err(err(
                line,
                format!("unknown flag --{name} for {keyword}{hint}"),
            ));
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(err(line, format!("{keyword}: --{name} given twice")));
        }
        out.push((name, f.value.as_ref().map(|v| v.value.to_string())));
    }
    Ok(out)
}

fn flag_value(
    flags: &[(String, Option<String>)],
    name: &str,
    keyword: &str,
    line: usize,
) -> Result<Option<String>, ParseError> {
    match flags.iter().find(|(n, _)| n == name) {
        None => Ok(None),
        Some((_, Some(v))) if !v.is_empty() => Ok(Some(v.clone())),
        Some(_) => Err(err(line, format!("{keyword}: --{name} needs a value"))),
    }
}

fn command(c: &pd::Command<'_>, escape: char) -> Command {
    match c {
        pd::Command::Exec(args) => {
            Command::Exec(args.value.iter().map(|a| a.value.to_string()).collect())
        }
        pd::Command::Shell(s) => Command::Shell(join_continuations(s.value, escape)),
        // Non-exhaustive upstream; no other form exists today.
        #[allow(unreachable_patterns)]
        _ => Command::Shell(String::new()),
    }
}

/// A Go duration (`30s`, `1m30s`, `500ms`, `1h`) in nanoseconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(0);
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult: f64 = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total = total.checked_add((num * mult) as u64)?;
    }
    Some(total)
}

fn convert(
    ins: &pd::Instruction<'_>,
    text: &str,
    escape: char,
    line: usize,
) -> Result<Instruction, ParseError> {
    use pd::Instruction as I;
    let no_heredoc = |keyword: &str| {
        err(
            line,
            format!("{keyword}: heredocs (<<EOF) are not supported by husk build"),
        )
    };
    Ok(match ins {
        I::From(f) => {
            let fl = flags("FROM", &f.options, &["platform"], line)?;
            if let Some(p) = flag_value(&fl, "platform", "FROM", line)?
                && !matches!(
                    p.as_str(),
                    "linux/amd64" | "$BUILDPLATFORM" | "$TARGETPLATFORM"
                )
            {
                return Err(err(
                    line,
                    format!("FROM --platform={p}: husk builds only linux/amd64 images"),
                ));
            }
            Instruction::From {
                image: f.image.value.to_string(),
                name: f.as_.as_ref().map(|(_, n)| n.value.to_ascii_lowercase()),
            }
        }
        I::Run(r) => {
            flags("RUN", &r.options, &[], line)?;
            if !r.here_docs.is_empty() {
                return Err(no_heredoc("RUN"));
            }
            Instruction::Run(command(&r.arguments, escape))
        }
        I::Copy(c) => copy_spec(false, &c.options, &c.src, &c.dest, line)?,
        I::Add(a) => copy_spec(true, &a.options, &a.src, &a.dest, line)?,
        I::Env(e) => Instruction::Env(e.arguments.value.to_string()),
        I::Arg(a) => Instruction::Arg(a.arguments.value.to_string()),
        I::Label(l) => Instruction::Label(l.arguments.value.to_string()),
        I::Workdir(w) => Instruction::Workdir(w.arguments.value.to_string()),
        I::User(u) => Instruction::User(u.arguments.value.to_string()),
        I::Cmd(c) => Instruction::Cmd(command(&c.arguments, escape)),
        I::Entrypoint(e) => Instruction::Entrypoint(command(&e.arguments, escape)),
        I::Expose(e) => {
            Instruction::Expose(e.arguments.iter().map(|a| a.value.to_string()).collect())
        }
        I::Volume(v) => Instruction::Volume(match &v.arguments {
            pd::JsonOrStringArray::Json(a) => a.value.iter().map(|s| s.value.to_string()).collect(),
            pd::JsonOrStringArray::String(a) => a.iter().map(|s| s.value.to_string()).collect(),
        }),
        I::Stopsignal(s) => Instruction::StopSignal(s.arguments.value.to_string()),
        I::Shell(s) => {
            // The crate takes the JSON form only; an empty array is no shell.
            if s.arguments.is_empty() {
                return Err(err(line, "SHELL needs at least one argument"));
            }
            Instruction::Shell(s.arguments.iter().map(|a| a.value.to_string()).collect())
        }
        I::Healthcheck(h) => {
            let fl = flags(
                "HEALTHCHECK",
                &h.options,
                &[
                    "interval",
                    "timeout",
                    "start-period",
                    "start-interval",
                    "retries",
                ],
                line,
            )?;
            match &h.arguments {
                pd::HealthcheckArguments::None { .. } => {
                    if !fl.is_empty() {
                        return Err(err(line, "HEALTHCHECK NONE takes no flags"));
                    }
                    Instruction::Healthcheck(Healthcheck::None)
                }
                pd::HealthcheckArguments::Cmd { arguments, .. } => {
                    let dur = |name: &str| -> Result<Option<u64>, ParseError> {
                        match flag_value(&fl, name, "HEALTHCHECK", line)? {
                            None => Ok(None),
                            Some(v) => parse_duration(&v).map(Some).ok_or_else(|| {
                                err(line, format!("HEALTHCHECK --{name}={v}: not a duration"))
                            }),
                        }
                    };
                    let retries = match flag_value(&fl, "retries", "HEALTHCHECK", line)? {
                        None => None,
                        Some(v) => Some(v.parse::<u64>().map_err(|_| {
                            err(line, format!("HEALTHCHECK --retries={v}: not a number"))
                        })?),
                    };
                    Instruction::Healthcheck(Healthcheck::Cmd {
                        command: command(arguments, escape),
                        interval: dur("interval")?,
                        timeout: dur("timeout")?,
                        start_period: dur("start-period")?,
                        start_interval: dur("start-interval")?,
                        retries,
                    })
                }
                #[allow(unreachable_patterns)]
                _ => return Err(err(line, "HEALTHCHECK: unsupported form")),
            }
        }
        I::Onbuild(o) => {
            let inner = keyword_span(&o.instruction).start;
            if matches!(
                *o.instruction,
                I::Onbuild(_) | I::From(_) | I::Maintainer(_)
            ) {
                return Err(err(
                    line,
                    "ONBUILD cannot trigger ONBUILD, FROM or MAINTAINER",
                ));
            }
            // Checked as any instruction would be.
            convert(&o.instruction, text, escape, line)?;
            Instruction::Onbuild(join_continuations(&text[inner..], escape))
        }
        I::Maintainer(m) => Instruction::Maintainer(m.name.value.to_string()),
        _ => return Err(err(line, "unsupported instruction")),
    })
}

fn copy_spec<'a, 'b: 'a>(
    add: bool,
    options: impl IntoIterator<Item = &'a pd::Flag<'b>>,
    src: &[pd::Source<'_>],
    dest: &pd::UnescapedString<'_>,
    line: usize,
) -> Result<Instruction, ParseError> {
    let keyword = if add { "ADD" } else { "COPY" };
    let allowed: &[&str] = if add {
        &["chown", "chmod"]
    } else {
        &["from", "chown", "chmod"]
    };
    let fl = flags(keyword, options, allowed, line)?;
    let mut sources = Vec::new();
    for s in src {
        match s {
            pd::Source::Path(p) => sources.push(p.value.to_string()),
            _ => {
                return Err(err(
                    line,
                    format!("{keyword}: heredocs (<<EOF) are not supported by husk build"),
                ));
            }
        }
    }
    let chmod = flag_value(&fl, "chmod", keyword, line)?;
    if let Some(m) = &chmod
        && (m.is_empty() || m.len() > 4 || u32::from_str_radix(m, 8).is_err())
    {
        return Err(err(
            line,
            format!("{keyword} --chmod={m}: expected an octal mode such as 0755"),
        ));
    }
    Ok(Instruction::Copy(CopySpec {
        add,
        from: flag_value(&fl, "from", keyword, line)?,
        chown: flag_value(&fl, "chown", keyword, line)?,
        chmod,
        sources,
        dest: dest.value.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Dockerfile {
        parse(s.as_bytes()).unwrap()
    }

    fn e(s: &str) -> ParseError {
        parse(s.as_bytes()).unwrap_err()
    }

    #[test]
    fn stages_args_and_line_numbers() {
        let d = p("# syntax=docker/dockerfile:1\n\
                   ARG BASE=busybox\n\
                   FROM $BASE AS Build\n\
                   RUN echo a \\\n  b\n\
                   \n\
                   # a comment\n\
                   FROM build\n\
                   COPY --from=build /x /y\n");
        assert_eq!(d.escape, '\\');
        assert_eq!(d.global_args.len(), 1);
        assert_eq!(d.global_args[0].line, 2);
        assert_eq!(d.stages.len(), 2);
        assert_eq!(d.stages[0].name.as_deref(), Some("build"));
        assert_eq!(d.stages[0].base, "$BASE");
        assert_eq!(d.stages[0].from.line, 3);
        let run = &d.stages[0].steps[0];
        assert_eq!(run.line, 4);
        assert_eq!(run.text, "RUN echo a   b");
        assert_eq!(
            run.instruction,
            Instruction::Run(Command::Shell("echo a   b".into()))
        );
        assert_eq!(d.stages[1].from.line, 8);
        assert_eq!(d.stages[1].steps[0].line, 9);
        assert_eq!(d.stage("BUILD").unwrap().index, 0);
        assert_eq!(d.stage("1").unwrap().index, 1);
        assert!(d.stage("nope").is_none());
    }

    #[test]
    fn continuations_skip_comments_and_blank_lines() {
        assert_eq!(
            join_continuations("RUN a \\\n# c\n\n  b \\\n  c\nRUN next", '\\'),
            "RUN a   b   c"
        );
        assert_eq!(join_continuations("RUN a\r\n", '\\'), "RUN a");
    }

    #[test]
    fn the_escape_directive() {
        let d = p("# escape=`\nFROM scratch\nRUN dir C:\\ `\n  /w\nWORKDIR C:\\x\n");
        assert_eq!(d.escape, '`');
        assert_eq!(
            d.stages[0].steps[0].instruction,
            Instruction::Run(Command::Shell("dir C:\\   /w".into()))
        );
        assert_eq!(
            d.stages[0].steps[1].instruction,
            Instruction::Workdir("C:\\x".into())
        );
    }

    #[test]
    fn forms_and_flags() {
        let d = p("FROM scratch\n\
                   RUN [\"echo\", \"x y\"]\n\
                   CMD echo \"$HOME\"\n\
                   COPY --chown=1:2 --chmod=0640 a b /d/\n\
                   ADD x.tar /\n\
                   HEALTHCHECK --interval=1m30s --retries=3 CMD [\"true\"]\n\
                   HEALTHCHECK NONE\n\
                   ONBUILD RUN echo later\n\
                   SHELL [\"/bin/sh\", \"-xc\"]\n\
                   VOLUME [\"/a\", \"/b\"]\n\
                   EXPOSE 80 53/udp\n");
        let s = &d.stages[0].steps;
        assert_eq!(
            s[0].instruction,
            Instruction::Run(Command::Exec(vec!["echo".into(), "x y".into()]))
        );
        assert_eq!(
            s[1].instruction,
            Instruction::Cmd(Command::Shell("echo \"$HOME\"".into()))
        );
        assert_eq!(
            s[2].instruction,
            Instruction::Copy(CopySpec {
                add: false,
                from: None,
                chown: Some("1:2".into()),
                chmod: Some("0640".into()),
                sources: vec!["a".into(), "b".into()],
                dest: "/d/".into(),
            })
        );
        assert!(matches!(&s[3].instruction, Instruction::Copy(c) if c.add));
        assert_eq!(
            s[4].instruction,
            Instruction::Healthcheck(Healthcheck::Cmd {
                command: Command::Exec(vec!["true".into()]),
                interval: Some(90_000_000_000),
                timeout: None,
                start_period: None,
                start_interval: None,
                retries: Some(3),
            })
        );
        assert_eq!(
            s[5].instruction,
            Instruction::Healthcheck(Healthcheck::None)
        );
        assert_eq!(
            s[6].instruction,
            Instruction::Onbuild("RUN echo later".into())
        );
        assert_eq!(
            s[7].instruction,
            Instruction::Shell(vec!["/bin/sh".into(), "-xc".into()])
        );
        assert_eq!(
            s[8].instruction,
            Instruction::Volume(vec!["/a".into(), "/b".into()])
        );
        assert_eq!(
            s[9].instruction,
            Instruction::Expose(vec!["80".into(), "53/udp".into()])
        );
    }

    #[test]
    fn malformed_input_names_the_line() {
        let x = e("FROM a\nRUN x\n\nFOO bar\n");
        assert_eq!(x.line, 4);
        assert!(x.message.contains("unknown instruction"), "{x}");
        assert_eq!(e("RUN x\n").line, 1);
        let x = e("FROM a\nCOPY --bogus=1 x y\n");
        assert_eq!(
            (x.line, x.message.as_str()),
            (2, "unknown flag --bogus for COPY")
        );
        let x = e("FROM a\nRUN --mount=type=cache,target=/x make\n");
        assert!(x.message.contains("BuildKit"), "{x}");
        let x = e("FROM a\n\nADD --from=a x y\n");
        assert_eq!(x.line, 3);
        assert_eq!(e("FROM a\nCOPY x\n").line, 2);
        assert_eq!(e("FROM a\nENV\n").line, 2);
        let x = e("FROM a\nRUN <<EOF\necho hi\nEOF\n");
        assert!(x.message.contains("heredoc"), "{x}");
        assert_eq!(e("FROM a\nCOPY --chmod=999 a b\n").line, 2);
        assert_eq!(e("FROM a\nCOPY --chown a b\n").line, 2);
        assert_eq!(e("FROM a\nHEALTHCHECK --interval=soon CMD true\n").line, 2);
        assert_eq!(e("FROM --platform=linux/arm64 a\n").line, 1);
        assert_eq!(e("FROM a AS 1x\n").line, 1);
        assert_eq!(e("FROM a AS x\nFROM b AS x\n").line, 2);
        assert_eq!(e("FROM a\nONBUILD FROM b\n").line, 2);
        assert!(
            parse(b"FROM a\n\xff\xfe\n")
                .unwrap_err()
                .message
                .contains("UTF-8")
        );
        assert_eq!(e("# only a comment\n").line, 0);
    }

    #[test]
    fn size_limits() {
        let big = format!("FROM a\n{}", "# pad\n".repeat(MAX_DOCKERFILE / 6 + 1));
        assert!(e(&big).message.contains("bytes"));
        let many = format!("FROM a\n{}", "ENV A=1\n".repeat(MAX_INSTRUCTIONS));
        assert!(e(&many).message.contains("instructions"));
        // A byte-order mark is allowed.
        assert_eq!(parse(b"\xEF\xBB\xBFFROM a\n").unwrap().stages.len(), 1);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(30_000_000_000));
        assert_eq!(parse_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_duration("500ms"), Some(500_000_000));
        assert_eq!(parse_duration("1.5h"), Some(5_400_000_000_000));
        assert_eq!(parse_duration("0"), Some(0));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration(""), None);
    }
}
