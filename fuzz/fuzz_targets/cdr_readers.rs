//! Fuzz the CSV scanner and the three CDR readers.
#![no_main]
use ratel_engine::cdr::Reader;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let tz: chrono_tz::Tz = chrono_tz::Tz::Europe__Berlin;
    let mut spans = Vec::new();
    ratel_engine::csv::scan_records(data, 1, true, &mut spans);
    let generic = Reader::generic(b"call_id,caller,callee,start_time,duration_s,disposition,account").expect("header");
    for s in spans {
        let rec = &data[s.start..s.end];
        for r in [generic, Reader::builtin("asterisk").unwrap(), Reader::builtin("freeswitch").unwrap()] {
            let _ = r.parse(rec, s.line, &tz);
        }
    }
});
