//! Docker's word processing for Dockerfile arguments (its `ShellLex`):
//! quotes, the escape character and variable expansion (`$V`, `${V}`,
//! `${V:-word}`, `${V:+word}`, `${V-word}`, `${V+word}`, `${V:?msg}`,
//! `${V?msg}`), as ENV, ARG, LABEL, COPY, ADD, WORKDIR, USER, EXPOSE,
//! VOLUME, STOPSIGNAL and FROM apply it. RUN, CMD and ENTRYPOINT are left to
//! the shell in the container.

/// A malformed word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    /// A quote is not closed.
    #[error("unexpected end of statement while looking for matching {0}")]
    Unterminated(&'static str),
    /// `${` without `}`.
    #[error("missing '}}' in {0:?}")]
    MissingBrace(String),
    /// `${V!x}` and the like.
    #[error("unsupported modifier ({0}) in substitution {1:?}")]
    BadModifier(char, String),
    /// `${}` or `${:-x}`.
    #[error("bad substitution {0:?}")]
    BadSubstitution(String),
    /// `${V:?message}` of an unset (or empty) variable.
    #[error("{name}: {message}")]
    Required {
        /// The variable.
        name: String,
        /// Its message.
        message: String,
    },
}

/// Looks a variable up.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Splits `s` at unquoted, unescaped whitespace, keeping quotes and escapes
/// in the words (for `NAME=value` pairs, processed one by one afterwards).
pub fn split_raw(s: &str, escape: char) -> Result<Vec<String>, ShellError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                cur.push(c);
                if c == escape && q == '"' {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                } else if c == q {
                    quote = None;
                }
            }
            None if c == escape => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                cur.push(c);
            }
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            None => cur.push(c),
        }
    }
    match quote {
        Some('"') => return Err(ShellError::Unterminated("double-quote")),
        Some(_) => return Err(ShellError::Unterminated("single-quote")),
        None => {}
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// Expands one word: variables replaced, quotes and escapes removed,
/// whitespace kept.
pub fn word(s: &str, escape: char, env: Lookup<'_>) -> Result<String, ShellError> {
    let mut p = Processor {
        chars: s.chars().collect(),
        pos: 0,
        escape,
        env,
    };
    let (words, _) = p.run(None, false)?;
    Ok(words.concat())
}

/// Expands `s` and splits it into words at unquoted whitespace (as the
/// shell would, but without globbing).
pub fn words(s: &str, escape: char, env: Lookup<'_>) -> Result<Vec<String>, ShellError> {
    let mut p = Processor {
        chars: s.chars().collect(),
        pos: 0,
        escape,
        env,
    };
    Ok(p.run(None, true)?.0)
}

struct Processor<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    env: Lookup<'a>,
}

impl Processor<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    /// Processes until the end or, with `stop`, that character (unquoted;
    /// consumed). Returns the words (one unless `split`) and whether `stop`
    /// was found.
    fn run(&mut self, stop: Option<char>, split: bool) -> Result<(Vec<String>, bool), ShellError> {
        let mut words = Vec::new();
        let mut cur = String::new();
        // A word made only of quotes ("") is still a word.
        let mut started = false;
        while let Some(c) = self.next() {
            if Some(c) == stop {
                if started || !cur.is_empty() || !split {
                    words.push(cur);
                }
                return Ok((words, true));
            }
            match c {
                '\'' => {
                    started = true;
                    loop {
                        match self.next() {
                            Some('\'') => break,
                            Some(ch) => cur.push(ch),
                            None => return Err(ShellError::Unterminated("single-quote")),
                        }
                    }
                }
                '"' => {
                    started = true;
                    loop {
                        match self.next() {
                            Some('"') => break,
                            Some(ch) if ch == self.escape => match self.next() {
                                Some(n) if n == '"' || n == '$' || n == self.escape => cur.push(n),
                                Some(n) => {
                                    cur.push(ch);
                                    cur.push(n);
                                }
                                None => return Err(ShellError::Unterminated("double-quote")),
                            },
                            Some('$') => cur.push_str(&self.variable()?),
                            Some(ch) => cur.push(ch),
                            None => return Err(ShellError::Unterminated("double-quote")),
                        }
                    }
                }
                '$' => {
                    let v = self.variable()?;
                    if split {
                        // An unquoted expansion splits at its whitespace.
                        for ch in v.chars() {
                            if ch.is_whitespace() {
                                if started || !cur.is_empty() {
                                    words.push(std::mem::take(&mut cur));
                                    started = false;
                                }
                            } else {
                                cur.push(ch);
                            }
                        }
                    } else {
                        cur.push_str(&v);
                    }
                }
                c if c == self.escape => match self.next() {
                    Some(n) => {
                        cur.push(n);
                        started = true;
                    }
                    // A trailing escape stays.
                    None => cur.push(c),
                },
                c if split && c.is_whitespace() => {
                    if started || !cur.is_empty() {
                        words.push(std::mem::take(&mut cur));
                        started = false;
                    }
                }
                c => cur.push(c),
            }
        }
        if stop.is_some() {
            return Ok((words, false));
        }
        if started || !cur.is_empty() || !split {
            words.push(cur);
        }
        Ok((words, false))
    }

    /// After a `$`: the expansion.
    fn variable(&mut self) -> Result<String, ShellError> {
        let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                let start = self.pos;
                let mut name = String::new();
                while let Some(c) = self.peek().filter(|c| is_name(*c)) {
                    name.push(c);
                    self.pos += 1;
                }
                let text: String = self.chars[start.saturating_sub(2)..].iter().collect();
                let text = || text.clone();
                match self.next() {
                    Some('}') if !name.is_empty() => Ok((self.env)(&name).unwrap_or_default()),
                    Some(_) | None if name.is_empty() => Err(ShellError::BadSubstitution(text())),
                    None => Err(ShellError::MissingBrace(text())),
                    Some(':') => {
                        let op = self
                            .next()
                            .ok_or_else(|| ShellError::MissingBrace(text()))?;
                        self.modifier(&name, op, true, &text())
                    }
                    Some(op @ ('-' | '+' | '?')) => self.modifier(&name, op, false, &text()),
                    Some(op) => Err(ShellError::BadModifier(op, text())),
                }
            }
            Some(c) if is_name(c) => {
                let mut name = String::new();
                while let Some(c) = self.peek().filter(|c| is_name(*c)) {
                    name.push(c);
                    self.pos += 1;
                }
                Ok((self.env)(&name).unwrap_or_default())
            }
            // A lone `$` is itself.
            _ => Ok("$".to_string()),
        }
    }

    /// `${name<colon?>op word}` after the operator.
    fn modifier(
        &mut self,
        name: &str,
        op: char,
        colon: bool,
        text: &str,
    ) -> Result<String, ShellError> {
        let (w, closed) = self.run(Some('}'), false)?;
        if !closed {
            return Err(ShellError::MissingBrace(text.to_string()));
        }
        let w = w.concat();
        let value = (self.env)(name);
        let set = match &value {
            Some(v) => !(colon && v.is_empty()),
            None => false,
        };
        match op {
            '-' => Ok(if set { value.unwrap_or_default() } else { w }),
            '+' => Ok(if set { w } else { String::new() }),
            '?' if set => Ok(value.unwrap_or_default()),
            '?' => Err(ShellError::Required {
                name: name.to_string(),
                message: if w.is_empty() {
                    "parameter null or not set".into()
                } else {
                    w
                },
            }),
            other => Err(ShellError::BadModifier(other, text.to_string())),
        }
    }
}

/// Splits `NAME=value` pairs (ENV, LABEL, ARG) the way Docker does: each
/// raw word at its first `=`, the value expanded; or, for the legacy
/// `NAME value...` form (no `=` in the first word) with `legacy`, one pair
/// whose value is the rest of the line.
pub fn name_values(
    s: &str,
    escape: char,
    env: Lookup<'_>,
    legacy: bool,
) -> Result<Vec<(String, Option<String>)>, String> {
    let raw = split_raw(s, escape).map_err(|e| e.to_string())?;
    let Some(first) = raw.first() else {
        return Err("requires at least one argument".into());
    };
    if legacy && !first.contains('=') {
        let rest = s.trim_start()[first.len()..].trim();
        if rest.is_empty() {
            return Err(format!(
                "{first} must have two arguments (NAME VALUE) or be of the form NAME=VALUE"
            ));
        }
        let name = word(first, escape, env).map_err(|e| e.to_string())?;
        let value = word(rest, escape, env).map_err(|e| e.to_string())?;
        return Ok(vec![(name, Some(value))]);
    }
    let mut out = Vec::new();
    for w in raw {
        match w.split_once('=') {
            Some(("", _)) => return Err(format!("names can not be blank: {w:?}")),
            Some((k, v)) => {
                let name = word(k, escape, env).map_err(|e| e.to_string())?;
                let value = word(v, escape, env).map_err(|e| e.to_string())?;
                out.push((name, Some(value)));
            }
            None if legacy => {
                return Err(format!(
                    "syntax error: can't find = in {w:?}; must be of the form NAME=VALUE"
                ));
            }
            None => out.push((word(&w, escape, env).map_err(|e| e.to_string())?, None)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "A" => Some("apple".into()),
            "EMPTY" => Some(String::new()),
            "SP" => Some("two words".into()),
            _ => None,
        }
    }

    fn w(s: &str) -> String {
        word(s, '\\', &env).unwrap()
    }

    #[test]
    fn variables_expand_as_docker_does() {
        assert_eq!(w("$A"), "apple");
        assert_eq!(w("${A}pie"), "applepie");
        assert_eq!(w("x$A-y"), "xapple-y");
        assert_eq!(w("$NOPE."), ".");
        assert_eq!(w("${NOPE:-def}"), "def");
        assert_eq!(w("${EMPTY:-def}"), "def");
        assert_eq!(w("${EMPTY-def}"), "");
        assert_eq!(w("${NOPE-def}"), "def");
        assert_eq!(w("${A:+set}"), "set");
        assert_eq!(w("${EMPTY:+set}"), "");
        assert_eq!(w("${EMPTY+set}"), "set");
        assert_eq!(w("${NOPE:-${A}}"), "apple");
        assert_eq!(w("${A:?}"), "apple");
        assert_eq!(w("$"), "$");
        assert_eq!(w("a$ b"), "a$ b");
        assert!(matches!(
            word("${NOPE:?needs it}", '\\', &env),
            Err(ShellError::Required { .. })
        ));
        assert!(matches!(
            word("${A", '\\', &env),
            Err(ShellError::MissingBrace(_))
        ));
        assert!(matches!(
            word("${}", '\\', &env),
            Err(ShellError::BadSubstitution(_))
        ));
        assert!(matches!(
            word("${A!x}", '\\', &env),
            Err(ShellError::BadModifier('!', _))
        ));
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(w("'$A'"), "$A");
        assert_eq!(w("\"$A and $SP\""), "apple and two words");
        assert_eq!(w(r#""a \"q\" \$A \x""#), r#"a "q" $A \x"#);
        assert_eq!(w(r"\$A"), "$A");
        assert_eq!(w(r"a\ b"), "a b");
        assert_eq!(w("trailing\\"), "trailing\\");
        assert_eq!(
            word("'open", '\\', &env),
            Err(ShellError::Unterminated("single-quote"))
        );
        assert_eq!(
            word("\"open", '\\', &env),
            Err(ShellError::Unterminated("double-quote"))
        );
        // Another escape character (`# escape=\``): backslashes are plain.
        assert_eq!(word(r"C:\dir `$A", '`', &env).unwrap(), r"C:\dir $A");
    }

    #[test]
    fn words_split_at_unquoted_space() {
        let ws = |s: &str| words(s, '\\', &env).unwrap();
        assert_eq!(ws("a  b\tc"), vec!["a", "b", "c"]);
        assert_eq!(ws("\"a b\" c"), vec!["a b", "c"]);
        assert_eq!(ws("$SP x"), vec!["two", "words", "x"]);
        assert_eq!(ws("\"$SP\" x"), vec!["two words", "x"]);
        assert_eq!(ws("'' x"), vec!["", "x"]);
        assert_eq!(ws("  "), Vec::<String>::new());
    }

    #[test]
    fn name_value_pairs() {
        let nv = |s: &str| name_values(s, '\\', &env, true);
        assert_eq!(
            nv(r#"A=1 B="two words" C=$A D=\$A"#).unwrap(),
            vec![
                ("A".into(), Some("1".into())),
                ("B".into(), Some("two words".into())),
                ("C".into(), Some("apple".into())),
                ("D".into(), Some("$A".into())),
            ]
        );
        assert_eq!(
            nv("LEGACY  the rest  of it").unwrap(),
            vec![("LEGACY".into(), Some("the rest  of it".into()))]
        );
        assert!(nv("A=1 B").is_err());
        assert!(nv("=1").is_err());
        assert!(nv("ALONE").is_err());
        assert!(nv("A=\"open").is_err());
        // ARG: names without values.
        assert_eq!(
            name_values("X Y=2", '\\', &env, false).unwrap(),
            vec![("X".into(), None), ("Y".into(), Some("2".into()))]
        );
        assert_eq!(
            split_raw(r#"a="b c" d\ e 'f g'"#, '\\').unwrap(),
            vec![r#"a="b c""#, r"d\ e", "'f g'"]
        );
    }
}
