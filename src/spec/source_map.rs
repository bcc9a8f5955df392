//! Maps field paths such as `spec.hosts[2].address` to their line and column in the YAML text,
//! so that semantic errors found after parsing still point at the exact spot in the file.
//!
//! The same pass records what the YAML library would only report one at a time, or in its own
//! terms: every mapping key (for unknown fields), keys given twice in one block, a second
//! document, and what the document's root is.

use granit_parser::{Event, Parser, ScalarStyle};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// FNV-1a: the map holds a path for every node of the document (a million for 100 000 hosts),
/// and SipHash's flooding protection buys nothing against the user's own file.
#[derive(Default)]
pub struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Location {
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub column: usize,
}

/// A mapping key as written.
#[derive(Debug, Clone)]
pub struct Key {
    /// Path of the mapping that holds it (`spec.hosts[2]`); empty for the root. Shared by the
    /// mapping's keys.
    pub parent: Rc<str>,
    pub name: Rc<str>,
    pub location: Location,
}

impl Key {
    pub fn path(&self) -> String {
        join(&self.parent, &self.name)
    }
}

/// A key given twice in one mapping.
#[derive(Debug, Clone)]
pub struct Duplicate {
    pub key: Key,
    pub first: Location,
}

/// An alias (`*name`) whose mapping's keys must also fit the place it is used in.
#[derive(Debug, Clone)]
pub struct AliasUse {
    /// The mapping path the aliased keys land in: the alias's own path for `key: *a`, the
    /// enclosing mapping for a merge `<<: *a`.
    pub target: String,
    pub anchor: usize,
    pub location: Location,
}

/// What the first document is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    Mapping,
    Sequence,
    /// A plain or quoted value; `null` when it is YAML's null (`~`, `null`, nothing).
    Scalar {
        null: bool,
    },
}

#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    values: FastMap<String, Location>,
    /// Every scalar key of the first document, in order.
    pub keys: Vec<Key>,
    pub duplicates: Vec<Duplicate>,
    pub aliases: Vec<AliasUse>,
    /// Keys of each anchored mapping, by anchor id.
    pub anchored_keys: HashMap<usize, Vec<Key>>,
    pub root: Option<Root>,
    /// Where a second document starts, if the file has one (a trailing `---` included).
    pub second_document: Option<Location>,
    /// Whether that second document holds anything (not only null or comments).
    pub second_document_has_content: bool,
    /// The parser failed here; what came before is mapped.
    pub syntax_error: Option<Location>,
}

enum Frame {
    Map {
        path: Rc<str>,
        key: Option<Rc<str>>,
        /// A non-scalar key is being read; its end makes the next node the value.
        complex_key: bool,
        anchor: usize,
        seen: Seen,
    },
    Seq {
        path: String,
        next: usize,
    },
}

/// The keys one mapping has shown so far: most mappings have a handful, so a list is faster
/// than a map until it grows.
enum Seen {
    Few(Vec<(Rc<str>, Location)>),
    Many(FastMap<Rc<str>, Location>),
}

impl Seen {
    /// Record `k`; the location of its first appearance if it was there already.
    fn insert(&mut self, k: &Rc<str>, loc: Location) -> Option<Location> {
        match self {
            Seen::Few(v) => {
                if let Some((_, first)) = v.iter().find(|(x, _)| x == k) {
                    return Some(*first);
                }
                v.push((k.clone(), loc));
                if v.len() > 16 {
                    *self = Seen::Many(v.drain(..).collect());
                }
                None
            }
            Seen::Many(m) => match m.get(k) {
                Some(first) => Some(*first),
                None => {
                    m.insert(k.clone(), loc);
                    None
                }
            },
        }
    }
}

/// The path of `key` in the mapping at `parent`.
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// The mapping a merge key's aliases land in: `a.<<` and `a.<<[1]` both merge into `a`.
fn merge_target(path: &str) -> Option<&str> {
    let p = path
        .strip_suffix(']')
        .map_or(path, |p| p.rfind('[').map_or(path, |i| &p[..i]));
    if p == "<<" {
        return Some("");
    }
    p.strip_suffix(".<<")
}

impl SourceMap {
    pub fn build(src: &str) -> SourceMap {
        let mut m = SourceMap::default();
        // About one node per 6-16 bytes of YAML; saves rehashing a large map several times.
        m.values.reserve(src.len() / 8);
        let mut stack: Vec<Frame> = Vec::new();
        let mut documents = 0;
        for ev in Parser::new_from_str(src) {
            let (ev, span) = match ev {
                Ok(x) => x,
                Err(e) => {
                    let mk = e.marker();
                    m.syntax_error = Some(Location {
                        line: mk.line(),
                        column: mk.col() + 1,
                    });
                    break;
                }
            };
            let loc = Location {
                line: span.start.line(),
                column: span.start.col() + 1,
            };
            if let Event::DocumentStart(..) = ev {
                documents += 1;
                if documents == 2 {
                    // Only the first document is mapped.
                    m.second_document = Some(loc);
                }
                continue;
            }
            if documents >= 2 {
                match ev {
                    Event::MappingStart(..) | Event::SequenceStart(..) | Event::Alias(_) => {}
                    Event::Scalar(ref v, style, ..) if !is_null(v, style) => {}
                    Event::StreamEnd => break,
                    _ => continue,
                }
                m.second_document_has_content = true;
                break;
            }
            let is_start = matches!(
                ev,
                Event::MappingStart(..)
                    | Event::SequenceStart(..)
                    | Event::Scalar(..)
                    | Event::Alias(_)
            );
            if is_start {
                let path = match stack.last_mut() {
                    None => {
                        m.root = Some(match &ev {
                            Event::MappingStart(..) => Root::Mapping,
                            Event::SequenceStart(..) => Root::Sequence,
                            Event::Scalar(v, style, ..) => Root::Scalar {
                                null: is_null(v, *style),
                            },
                            _ => Root::Scalar { null: false },
                        });
                        String::new()
                    }
                    Some(Frame::Map {
                        path,
                        key,
                        complex_key,
                        anchor,
                        seen,
                    }) => {
                        if key.is_none() {
                            match &ev {
                                Event::Scalar(k, ..) => {
                                    let k: Rc<str> = Rc::from(&**k);
                                    let found = Key {
                                        parent: path.clone(),
                                        name: k.clone(),
                                        location: loc,
                                    };
                                    if let Some(first) = seen.insert(&k, loc) {
                                        m.duplicates.push(Duplicate {
                                            key: found.clone(),
                                            first,
                                        });
                                    }
                                    if *anchor != 0 {
                                        m.anchored_keys
                                            .entry(*anchor)
                                            .or_default()
                                            .push(found.clone());
                                    }
                                    m.keys.push(found);
                                    *key = Some(k);
                                }
                                _ => {
                                    *complex_key = true;
                                    *key = Some("?".into());
                                    let p = join(path, "?");
                                    push(&mut stack, &ev, p);
                                }
                            }
                            continue;
                        }
                        let Some(k) = key.take() else { continue };
                        join(path, &k)
                    }
                    Some(Frame::Seq { path, next }) => {
                        let p = format!("{path}[{next}]");
                        *next += 1;
                        p
                    }
                };
                if let Event::Alias(anchor) = ev {
                    let target = merge_target(&path).unwrap_or(&path).to_string();
                    m.aliases.push(AliasUse {
                        target,
                        anchor,
                        location: loc,
                    });
                }
                // Scalars (most nodes) give their path to the map; collections keep it too.
                match ev {
                    Event::MappingStart(..) | Event::SequenceStart(..) => {
                        m.values.entry(path.clone()).or_insert(loc);
                        push(&mut stack, &ev, path);
                    }
                    _ => {
                        m.values.entry(path).or_insert(loc);
                    }
                }
            } else if matches!(ev, Event::MappingEnd | Event::SequenceEnd) {
                stack.pop();
                if let Some(Frame::Map { complex_key, .. }) = stack.last_mut() {
                    // The popped collection was a key: keep `key` set so the next node is its value.
                    *complex_key = false;
                }
            }
        }
        m
    }

    /// The location of `path`, or of its nearest ancestor that exists in the file.
    pub fn locate(&self, path: &str) -> Option<Location> {
        let mut p = path;
        loop {
            if let Some(l) = self.values.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// True when the path itself (not an ancestor) is written in the file.
    pub fn contains(&self, path: &str) -> bool {
        self.values.contains_key(path)
    }
}

/// YAML's null: `~`, `null` (any case YAML 1.2 allows) or nothing, unquoted.
fn is_null(v: &str, style: ScalarStyle) -> bool {
    style == ScalarStyle::Plain && matches!(v, "" | "~" | "null" | "Null" | "NULL")
}

fn push(stack: &mut Vec<Frame>, ev: &Event<'_>, path: String) {
    match ev {
        Event::MappingStart(_, anchor, _) => stack.push(Frame::Map {
            path: path.into(),
            key: None,
            complex_key: false,
            anchor: *anchor,
            seen: Seen::Few(Vec::new()),
        }),
        Event::SequenceStart(..) => stack.push(Frame::Seq { path, next: 0 }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_to_values() {
        let src = "a:\n  b: 1\n  list:\n    - x: 2\n    - y: [3, 4]\n";
        let m = SourceMap::build(src);
        assert_eq!(m.locate("a.b"), Some(Location { line: 2, column: 6 }));
        assert_eq!(
            m.locate("a.list[1].y[1]"),
            Some(Location {
                line: 5,
                column: 14
            })
        );
        assert_eq!(
            m.locate("a.list[0].x"),
            Some(Location {
                line: 4,
                column: 10
            })
        );
        // Missing fields fall back to the nearest ancestor.
        assert_eq!(m.locate("a.list[0].missing"), m.locate("a.list[0]"));
        assert!(!m.contains("a.list[0].missing"));
        assert_eq!(m.root, Some(Root::Mapping));
        let names: Vec<(&str, &str)> = m.keys.iter().map(|k| (&*k.parent, &*k.name)).collect();
        assert_eq!(
            names,
            [
                ("", "a"),
                ("a", "b"),
                ("a", "list"),
                ("a.list[0]", "x"),
                ("a.list[1]", "y")
            ]
        );
    }

    #[test]
    fn duplicates_documents_and_roots() {
        let m = SourceMap::build("a: 1\nb:\n  c: 2\n  c: 3\na: 4\n");
        let d: Vec<(&str, usize, usize)> = m
            .duplicates
            .iter()
            .map(|d| (&*d.key.name, d.first.line, d.key.location.line))
            .collect();
        assert_eq!(d, [("c", 3, 4), ("a", 1, 5)]);
        // The first document wins the map, and only a second one with content counts.
        let m = SourceMap::build("a: 1\n---\nb: 2\n");
        assert_eq!(m.second_document.map(|l| l.line), Some(2));
        assert!(m.second_document_has_content);
        assert!(!m.contains("b"));
        assert_eq!(SourceMap::build("---\na: 1\n").second_document, None);
        for empty_second in ["a: 1\n---\n", "a: 1\n---\n# c\n", "a: 1\n--- ~\n"] {
            let m = SourceMap::build(empty_second);
            assert_eq!(m.second_document.map(|l| l.line), Some(2));
            assert!(!m.second_document_has_content, "{empty_second:?}");
        }
        assert_eq!(SourceMap::build("# only\n\n").root, None);
        assert_eq!(
            SourceMap::build("~\n").root,
            Some(Root::Scalar { null: true })
        );
        assert_eq!(
            SourceMap::build("'~'\n").root,
            Some(Root::Scalar { null: false })
        );
        assert_eq!(SourceMap::build("- a\n").root, Some(Root::Sequence));
    }

    #[test]
    fn aliases_know_where_their_keys_land() {
        let src = "base: &b {x: 1}\none:\n  <<: *b\ntwo: *b\nthree:\n  <<: [*b]\n";
        let m = SourceMap::build(src);
        let t: Vec<&str> = m.aliases.iter().map(|a| a.target.as_str()).collect();
        assert_eq!(t, ["one", "two", "three"]);
        let anchor = m.aliases[0].anchor;
        assert_eq!(&*m.anchored_keys[&anchor][0].name, "x");
    }
}
