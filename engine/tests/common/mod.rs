//! Setup shared by the engine's integration tests (each test file is its own crate and
//! includes this module).

use std::path::Path;

use ratel_engine::catalog::Catalog;
use ratel_engine::config::{ConfigSource, LoadedConfig};
use ratel_engine::domain::NewClient;
use ratel_engine::ledger::Ledger;
use rust_decimal::Decimal;

/// A catalog over `data` with group `g` on the demo's `std` deck.
pub fn catalog(data: &Path) -> Catalog {
    let deck = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/demo/rates/std.csv");
    let toml = format!(
        "[storage]\ndata_dir = {:?}\n[[group]]\nname = \"g\"\ntariff = \"std\"\n[[tariff]]\nname = \"std\"\nrates = {:?}\n",
        data.display().to_string(),
        deck.display().to_string()
    );
    Catalog::build(
        &LoadedConfig::from_str(&toml, ConfigSource::File("t.toml".into()), ".".into()).unwrap(),
    )
    .unwrap()
}

/// Clients u0..u{n-1} in group g, 100 of credit each.
pub fn add_users(ledger: &mut Ledger, n: usize) {
    let users: Vec<NewClient> = (0..n)
        .map(|u| NewClient {
            username: Some(format!("u{u}")),
            group: "g".into(),
            credit: Decimal::from(100),
            ..Default::default()
        })
        .collect();
    ledger.add_clients(&users, "test", 0).unwrap();
}
