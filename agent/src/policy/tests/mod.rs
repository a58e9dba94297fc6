//! Rank specs and the decision table.

mod decisions;

use super::*;

#[test]
fn rank_specs_parse() {
    let r = |lo: u32, hi: u32| lo..=hi;
    let cases: &[(&str, Option<RankSpec>, &str)] = &[
        ("0", Some(RankSpec::Ranks(vec![r(0, 0)])), "0"),
        ("all", Some(RankSpec::All), "all"),
        (" ALL ", Some(RankSpec::All), "all"),
        ("master", Some(RankSpec::Master), "master"),
        ("Local0", Some(RankSpec::Local0), "local0"),
        (
            "0,3,5-7",
            Some(RankSpec::Ranks(vec![r(0, 0), r(3, 3), r(5, 7)])),
            "0,3,5-7",
        ),
        (
            " 1 , 2 - 4 ",
            Some(RankSpec::Ranks(vec![r(1, 1), r(2, 4)])),
            "1,2-4",
        ),
        ("4-4", Some(RankSpec::Ranks(vec![r(4, 4)])), "4"),
        ("", None, "empty"),
        ("7-5", None, "backwards"),
        ("a", None, "not a rank number"),
        ("-1", None, "not a rank number"),
        ("1,,2", None, "not a rank number"),
        ("1-", None, "not a rank number"),
        ("99999999999", None, "not a rank number"),
    ];
    for (text, want, shown) in cases {
        match (text.parse::<RankSpec>(), want) {
            (Ok(got), Some(want)) => {
                assert_eq!(&got, want, "{text:?}");
                assert_eq!(got.to_string(), *shown, "{text:?} displays as {shown:?}");
            }
            (Err(err), None) => {
                let msg = err.to_string();
                assert!(
                    msg.contains(shown) && msg.contains(text.trim()),
                    "{text:?}: {msg}"
                );
            }
            (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn contains_rank() {
    let spec: RankSpec = "0,3,5-7".parse().expect("valid spec");
    let hits: Vec<u32> = (0..10).filter(|&n| spec.contains_rank(n)).collect();
    assert_eq!(hits, [0, 3, 5, 6, 7]);
    assert!(RankSpec::All.contains_rank(12345));
    assert!(!RankSpec::Master.contains_rank(0));
    assert!(!RankSpec::Local0.contains_rank(0));
    assert_eq!(RankSpec::default().to_string(), "0");
}
