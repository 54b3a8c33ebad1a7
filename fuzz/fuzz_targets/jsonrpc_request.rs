//! Fuzz the JSON-RPC request parsing path: arbitrary bytes as a request body, parsed the
//! way the API does (serde_json with its recursion limit), then the params accessors.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(serde_json::Value::Object(mut req)) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = req.remove("method").and_then(|m| m.as_str().map(str::to_owned));
        if let Some(serde_json::Value::Object(p)) = req.remove("params") {
            for key in ["credit", "user_id", "count", "conds"] {
                if let Some(v) = p.get(key) {
                    let text = v.to_string();
                    let _ = text.parse::<f64>();
                }
            }
        }
    }
});
