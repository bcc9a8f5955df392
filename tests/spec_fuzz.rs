//! Property tests: no input, however broken, makes spec loading panic.

use hakube::spec;
use proptest::prelude::*;
use std::path::Path;

const SEED: &str = include_str!("../examples/seed.yaml");

fn load(s: &str) {
    let l = spec::load_str(s, "cluster.yaml", Path::new("/nonexistent"));
    // Either a cluster or at least one error, never both missing.
    assert!(l.cluster.is_some() || l.diagnostics.has_errors());
    for d in &l.diagnostics.items {
        let _ = d.to_string();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,400}") {
        load(&s);
    }

    #[test]
    fn yaml_shaped_noise_never_panics(s in "([a-zA-Z]{1,8}: ?(\\[|\\{|-|[0-9./:]{0,12}|\"[^\"]{0,5}\")?\n {0,6}){0,30}") {
        load(&s);
    }

    /// Cut the seed anywhere and splice in junk: locations and messages must still hold.
    #[test]
    fn mangled_seed_never_panics(cut in 0usize..2400, len in 0usize..40, junk in "[ -~\n]{0,20}") {
        let bytes = SEED.as_bytes();
        let a = cut.min(bytes.len());
        let b = (a + len).min(bytes.len());
        let mut s = String::from_utf8_lossy(&bytes[..a]).to_string();
        s.push_str(&junk);
        s.push_str(&String::from_utf8_lossy(&bytes[b..]));
        load(&s);
    }

    /// Any value in any scalar slot of the seed.
    #[test]
    fn any_scalar_value_never_panics(line in 0usize..80, value in "[ -~]{0,16}") {
        let mut lines: Vec<String> = SEED.lines().map(String::from).collect();
        let i = line % lines.len();
        if let Some((k, _)) = lines[i].split_once(": ") {
            lines[i] = format!("{k}: {value}");
        }
        load(&lines.join("\n"));
    }
}
