//! `config::parse` on arbitrary bytes: an error names a field, never a panic. A config
//! that parses must parse again the same way (no hidden state).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_fuzz::config;

fuzz_target!(|data: &[u8]| {
    let env = |name: &str| (name.len() < 40).then(|| format!("sk-fuzz-{name}"));
    let a = config::parse_with_env(data, &env);
    let b = config::parse_with_env(data, &env);
    assert_eq!(a.is_ok(), b.is_ok());
    if let Err(e) = a {
        // The message is rendered for Envoy's log: rendering must not panic either.
        let _ = e.to_string();
    }
    let _ = config::parse(data);
});
