//! Reading events back (cluster mode's bus carries them between nodes): the event
//! types name fixed values (`status`, `finish_reason`, `step`…) as `&'static str`, so a
//! value read from the wire is interned — each distinct string leaked once, at most
//! [`MAX`] of them (a peer sending endless new values gets "unknown", not our memory).

use std::collections::HashSet;

use parking_lot::Mutex;
use serde::{Deserialize, Deserializer};

const MAX: usize = 1024;

static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);

/// The `'static` copy of `s`.
pub fn intern(s: &str) -> &'static str {
    let mut seen = SEEN.lock();
    let set = seen.get_or_insert_with(HashSet::new);
    if let Some(v) = set.get(s) {
        return v;
    }
    if set.len() >= MAX {
        return "unknown";
    }
    let v: &'static str = Box::leak(s.to_string().into_boxed_str());
    set.insert(v);
    v
}

pub fn interned<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    Ok(intern(&s))
}

pub fn interned_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'static str>, D::Error> {
    let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
    Ok(s.map(|s| intern(&s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_copy_per_value_and_a_bound_on_new_ones() {
        let a = intern("joined");
        assert!(std::ptr::eq(a, intern("joined")));
        for i in 0..MAX + 10 {
            intern(&format!("v{i}"));
        }
        assert_eq!(intern("never-seen-before"), "unknown");
        assert!(std::ptr::eq(a, intern("joined")));
    }
}
