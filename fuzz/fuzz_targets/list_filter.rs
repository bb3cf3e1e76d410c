//! containerd List filters come from the wire. Property: parsing never
//! panics, and a filter that parses as `field==value` matches exactly an item
//! whose field holds that value.
#![no_main]

use lazysnap::snapshot::filter::{Adaptor, Op, parse};
use libfuzzer_sys::fuzz_target;

struct One(Vec<String>, String);

impl Adaptor for One {
    fn field(&self, path: &[String]) -> Option<String> {
        (path == self.0.as_slice()).then(|| self.1.clone())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(f) = parse(s) else { return };
    assert!(!f.selectors.is_empty());
    if let [sel] = f.selectors.as_slice()
        && let Op::Equal(v) = &sel.op
    {
        assert!(f.matches(&One(sel.path.clone(), v.clone())));
        assert!(!f.matches(&One(sel.path.clone(), format!("{v}x"))));
    }
});
