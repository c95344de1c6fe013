#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lantern_tests::fuzzing::log_recovery(data);
});
