#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lantern_tests::fuzzing::wire_writes(data);
});
