//! Maps field paths such as `spec.hosts[2].address` to their line and column in the YAML text,
//! so that semantic errors found after parsing still point at the exact spot in the file.

use granit_parser::{Event, Parser};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Location {
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub column: usize,
}

#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    values: HashMap<String, Location>,
}

enum Frame {
    Map {
        path: String,
        key: Option<String>,
        /// A non-scalar key is being read; its end makes the next node the value.
        complex_key: bool,
    },
    Seq {
        path: String,
        next: usize,
    },
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl SourceMap {
    pub fn build(src: &str) -> SourceMap {
        let mut values = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        for ev in Parser::new_from_str(src) {
            let Ok((ev, span)) = ev else { break };
            let loc = Location {
                line: span.start.line(),
                column: span.start.col() + 1,
            };
            let is_start = matches!(
                ev,
                Event::MappingStart(..)
                    | Event::SequenceStart(..)
                    | Event::Scalar(..)
                    | Event::Alias(_)
            );
            if is_start {
                let path = match stack.last_mut() {
                    None => String::new(),
                    Some(Frame::Map {
                        path,
                        key,
                        complex_key,
                    }) => {
                        if key.is_none() {
                            match &ev {
                                Event::Scalar(k, ..) => *key = Some(k.to_string()),
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
                values.entry(path.clone()).or_insert(loc);
                push(&mut stack, &ev, path);
            } else if matches!(ev, Event::MappingEnd | Event::SequenceEnd) {
                stack.pop();
                if let Some(Frame::Map { complex_key, .. }) = stack.last_mut() {
                    // The popped collection was a key: keep `key` set so the next node is its value.
                    *complex_key = false;
                }
            }
        }
        SourceMap { values }
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

fn push(stack: &mut Vec<Frame>, ev: &Event<'_>, path: String) {
    match ev {
        Event::MappingStart(..) => stack.push(Frame::Map {
            path,
            key: None,
            complex_key: false,
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
    }
}
