//! The harness itself: namespaces are really isolated, and everything is torn
//! down even when the test using it panics.

use std::process::Command;

use netd_testbed::{Testbed, probe};

fn netns_exists(name: &str) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .any(|n| n == name)
}

#[test]
fn namespaces_are_removed_when_a_test_panics() {
    let names = std::thread::spawn(|| {
        let mut bed = Testbed::new().unwrap();
        let a = bed.add_netns("a").unwrap();
        let b = bed.add_netns("b").unwrap();
        bed.veth(&a, &bed.ifname("va"), &b, &bed.ifname("vb"))
            .unwrap();
        let _sleeper = a.spawn("sleep", &["30"]).unwrap();
        let names = vec![a.name().to_owned(), b.name().to_owned()];
        assert!(names.iter().all(|n| netns_exists(n)));
        std::panic::panic_any(names);
    })
    .join()
    .expect_err("the thread panics on purpose");
    let names = names.downcast::<Vec<String>>().unwrap();
    for name in names.iter() {
        assert!(!netns_exists(name), "{name} left behind");
    }
}

#[test]
fn veth_pair_connects_two_namespaces_and_nothing_else() {
    let mut bed = Testbed::new().unwrap();
    let a = bed.add_netns("a").unwrap();
    let b = bed.add_netns("b").unwrap();
    let (va, vb) = (bed.ifname("va"), bed.ifname("vb"));
    bed.veth(&a, &va, &b, &vb).unwrap();
    a.ip(&["addr", "add", "10.202.0.1/30", "dev", &va]).unwrap();
    b.ip(&["addr", "add", "10.202.0.2/30", "dev", &vb]).unwrap();
    assert!(probe::ping(&a, "10.202.0.2", 1).unwrap());
    // The links exist only inside the namespaces, never in the root one.
    let root = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let root = String::from_utf8_lossy(&root.stdout);
    assert!(!root.contains(&va) && !root.contains(&vb));
    // A third namespace without a link cannot reach them.
    let c = bed.add_netns("c").unwrap();
    assert!(!probe::ping(&c, "10.202.0.2", 1).unwrap());
}
