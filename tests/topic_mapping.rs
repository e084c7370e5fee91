//! Topic translation is a bijection on valid names; patterns translate and match like busrt.
#![cfg(feature = "cli")]

mod common;

use busbridge::topic::{topic_for_event, Pattern, Topic};
use proptest::prelude::*;

proptest! {
    #[test]
    fn dotted_busrt_bijection(levels in prop::collection::vec("[a-zA-Z0-9_-]{1,8}", 1..8)) {
        let dotted = levels.join(".");
        let topic = Topic::parse(&dotted).unwrap();
        let slashed = topic.to_busrt();
        prop_assert_eq!(&slashed, &levels.join("/"));
        prop_assert_eq!(Topic::from_busrt(&slashed).unwrap(), topic);
    }

    #[test]
    fn arbitrary_strings_never_panic(s in ".{0,300}") {
        let _ = Topic::parse(&s);
        let _ = Pattern::parse(&s);
        let _ = Pattern::from_busrt(&s);
    }

    #[test]
    fn pattern_round_trips(levels in prop::collection::vec(prop_oneof!["[a-z]{1,4}", Just("*".to_string()), Just("+".to_string())], 1..7), hash in any::<bool>()) {
        let mut dotted = levels.join(".");
        if hash { dotted.push_str(".#"); }
        let p = Pattern::parse(&dotted).unwrap();
        prop_assert_eq!(Pattern::from_busrt(&p.to_busrt()).unwrap(), p.clone());
        prop_assert_eq!(Pattern::parse(&p.to_dotted()).unwrap(), p);
    }
}

#[test]
fn every_event_kind_has_a_topic_under_the_hierarchy() {
    let expected = [
        ("events.process.new", "events.process.*"),
        ("events.network.connection", "events.network.*"),
        ("events.filesystem.operation", "events.filesystem.*"),
        ("events.performance.metric", "events.performance.*"),
        ("tasks.procmond", "tasks.*"),
    ];
    for (event, (topic, pattern)) in common::every_kind().iter().zip(expected) {
        let t = topic_for_event(event);
        assert_eq!(t.as_str(), topic);
        assert!(
            Pattern::parse(pattern).unwrap().matches(&t),
            "{pattern} !~ {topic}"
        );
    }
}
