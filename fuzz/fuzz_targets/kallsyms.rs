#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xftrace::testkit::fuzz::kallsyms(data));
