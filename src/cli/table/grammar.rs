//! Reading the command table: matching a command line against it, and the usage text and
//! completion words it gives.

use super::*;

/// A command matched against the words after the entity.
pub struct Matched<'a> {
    pub cmd: &'static Cmd,
    captures: Vec<(&'static str, &'a str)>,
    /// The words after the command's own: the tail (domain id and token).
    pub tail: &'a [&'a str],
}

/// The first row of `entity` whose words fit `w` and whose tail has a fitting length.
pub fn find<'a>(entity: &str, w: &'a [&'a str]) -> Option<Matched<'a>> {
    COMMANDS.iter().filter(|c| c.entities.contains(&entity)).find_map(|c| {
        if w.len() < c.words.len() {
            return None;
        }
        let mut captures = Vec::new();
        for (word, given) in c.words.iter().zip(w) {
            match word {
                W::Lit(l) if l == given => {}
                W::Lit(_) => return None,
                W::Alt(name, options) if options.contains(given) => captures.push((*name, *given)),
                W::Alt(..) => return None,
                W::Arg(name) | W::Json(name) => captures.push((*name, *given)),
            }
        }
        let tail = &w[c.words.len()..];
        let fits = match c.tail {
            Tail::Public => tail.is_empty(),
            Tail::OptionalToken | Tail::Token => tail.len() <= 1,
            Tail::Domain => (1..=2).contains(&tail.len()),
        };
        fits.then_some(Matched { cmd: c, captures, tail })
    })
}

impl Matched<'_> {
    fn get(&self, name: &str) -> Result<&str, String> {
        self.captures
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("the command table names `{name}` without capturing it"))
    }

    /// The path with captures, the entity and the domain id filled in.
    pub fn path(&self, entity: &str, domain: Option<&str>) -> String {
        let mut p = self.cmd.path.replace("{entity}", entity);
        if let Some(d) = domain {
            p = p.replace("{d}", d);
        }
        for (n, v) in &self.captures {
            p = p.replace(&format!("{{{n}}}"), v);
        }
        p
    }

    /// The request body, with JSON captures parsed.
    pub fn body(&self) -> Result<Option<Value>, String> {
        self.cmd.body.map(|v| self.value(v)).transpose()
    }

    fn value(&self, v: V) -> Result<Value, String> {
        Ok(match v {
            V::Arg(n) => json!(self.get(n)?),
            V::One(n) => json!([self.get(n)?]),
            V::Json(n) => {
                let s = self.get(n)?;
                serde_json::from_str(s).map_err(|e| format!("{n} is not valid JSON: {e}"))?
            }
            V::Obj(fields) => {
                let mut m = Map::new();
                for (k, v) in fields {
                    m.insert((*k).to_string(), self.value(*v)?);
                }
                Value::Object(m)
            }
        })
    }
}

/// A command's line in the usage text, after `fluxgate <entity> `.
pub(super) fn usage_line(c: &Cmd) -> String {
    let mut parts: Vec<String> = c
        .words
        .iter()
        .map(|w| match w {
            W::Lit(l) => l.to_string(),
            W::Alt(_, options) => options.join("|"),
            W::Arg(n) => format!("<{n}>"),
            W::Json(n) => format!("'<{n}>'"),
        })
        .collect();
    match c.tail {
        Tail::Public => {}
        Tail::OptionalToken => parts.push("[<token>]".into()),
        Tail::Token => parts.push("<token>".into()),
        Tail::Domain => parts.push("<domain_id> <token>".into()),
    }
    if c.query {
        parts.push("[--offset N --limit N]".into());
    }
    parts.join(" ")
}

/// The usage text of an entity (every row and hand-written command), or the top-level usage.
pub fn usage(entity: &str) -> String {
    if !ENTITIES.contains(&entity) {
        return top();
    }
    let lines: Vec<String> = COMMANDS
        .iter()
        .filter(|c| c.entities.contains(&entity))
        .map(usage_line)
        .chain(
            IRREGULAR
                .iter()
                .filter(|(e, ..)| *e == entity)
                .map(|(_, line, _)| line.to_string()),
        )
        .map(|l| format!("fluxgate {entity} {l}"))
        .collect();
    format!("usage: {}", lines.join("\n       "))
}

/// The top-level usage.
pub fn top() -> String {
    format!(
        "usage: fluxgate serve [--config FILE --data-dir DIR --http-addr A --mqtt-addr A --ws-addr A]
       fluxgate {} ...
       fluxgate admin reset-password [--config FILE --data-dir DIR]
       fluxgate completions bash|zsh|fish
global flags: --url URL (or FLUXGATE_URL), --raw (compact JSON), --help",
        ENTITIES.join("|")
    )
}

/// The words completions offer after `fluxgate <entity>`: every fixed word of its commands.
pub fn verbs(entity: &str) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Vec::new();
    for c in COMMANDS.iter().filter(|c| c.entities.contains(&entity)) {
        for w in c.words {
            match w {
                W::Lit(l) => v.push(l),
                W::Alt(_, options) => v.extend_from_slice(options),
                W::Arg(_) | W::Json(_) => {}
            }
        }
    }
    for (_, _, words) in IRREGULAR.iter().filter(|(e, ..)| *e == entity) {
        v.extend_from_slice(words);
    }
    let mut seen = std::collections::HashSet::new();
    v.retain(|w| seen.insert(*w));
    v
}
