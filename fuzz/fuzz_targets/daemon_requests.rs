//! The daemon's request handlers, in process (`fleetkeyd::fuzzing`).
#![no_main]

use std::sync::OnceLock;

use fleetkeyd::fuzzing::Harness;
use libfuzzer_sys::fuzz_target;

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fleetkey-fuzz-daemon-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("harness directory");
        Harness::new(&dir).expect("harness")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = harness().run(data) {
        panic!("{broken}");
    }
});
