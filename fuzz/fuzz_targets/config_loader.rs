//! Fuzz the config loader and catalog build, and the rate deck loader.
#![no_main]
use ratel_engine::catalog::{load_rate_deck, Catalog};
use ratel_engine::config::{ConfigSource, LoadedConfig};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(lc) = LoadedConfig::from_str(text, ConfigSource::File("fuzz.toml".into()), ".".into()) {
        let _ = Catalog::build(&lc);
    }
    let _ = load_rate_deck("t", "fuzz.csv", text);
});
