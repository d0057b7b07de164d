//! Maps key paths (`processes[1].match.comm[0]`) to their line and column in
//! the YAML text, so validation problems found after decoding still point at
//! the line to fix. serde_norway keeps no positions once a value is decoded.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

#[derive(Debug, Default)]
pub struct Locations {
    by_path: HashMap<String, (usize, usize)>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Recorder {
    stack: Vec<Frame>,
    by_path: HashMap<String, (usize, usize)>,
}

impl Recorder {
    /// Where the node that starts now belongs, recording keys and items.
    fn node(&mut self, scalar: Option<&str>, mark: Marker) -> Option<String> {
        let at = (mark.line(), mark.col() + 1);
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { path, key }) => match key.take() {
                None => {
                    // A key: record it and wait for its value.
                    let name = scalar.unwrap_or("?").to_owned();
                    let full = join(path, &name);
                    self.by_path.entry(full).or_insert(at);
                    *key = Some(name);
                    None
                }
                Some(name) => Some(join(path, &name)),
            },
            Some(Frame::Seq { path, next }) => {
                let full = format!("{path}[{next}]");
                *next += 1;
                self.by_path.entry(full.clone()).or_insert(at);
                Some(full)
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                self.node(Some(&value), mark);
            }
            Event::Alias(_) => {
                self.node(None, mark);
            }
            Event::MappingStart(..) => {
                if let Some(path) = self.node(None, mark) {
                    self.stack.push(Frame::Map { path, key: None });
                } else {
                    // A complex key: keep the nesting balanced.
                    self.stack.push(Frame::Map {
                        path: "?".into(),
                        key: None,
                    });
                }
            }
            Event::SequenceStart(..) => {
                let path = self.node(None, mark).unwrap_or_else(|| "?".into());
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

impl Locations {
    /// Positions of every key and sequence item; empty when the text does not parse.
    pub fn of(text: &str) -> Self {
        let mut recorder = Recorder::default();
        let mut parser = Parser::new_from_str(text);
        // A syntax error leaves what was recorded up to it.
        let _ = parser.load(&mut recorder, false);
        Locations {
            by_path: recorder.by_path,
        }
    }

    /// The position of `path`, or of its nearest ancestor found in the text
    /// (a missing key is reported where its parent stands).
    pub fn find(&self, path: &str) -> Option<(usize, usize)> {
        let mut path = path;
        loop {
            if let Some(at) = self.by_path.get(path) {
                return Some(*at);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_items() {
        let text = "web:\n  listen_addresses:\n    - ':1'\n    - ':2'\nprocesses:\n  - name: a\n    match: {comm: [x, y]}\n";
        let l = Locations::of(text);
        assert_eq!(l.find("web"), Some((1, 1)));
        assert_eq!(l.find("web.listen_addresses[1]"), Some((4, 7)));
        assert_eq!(l.find("processes[0].name"), Some((6, 5)));
        assert_eq!(l.find("processes[0].match.comm[1]"), Some((7, 23)));
        // Unknown leaf: falls back to the parent.
        assert_eq!(l.find("processes[0].interval").map(|l| l.0), Some(6));
    }
}
