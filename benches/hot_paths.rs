//! criterion benches of the hot paths: RADIUS decode + verify (ours and radius-rs side by
//! side), VoIP and internet rating, prefix lookup over 100k prefixes, a ledger batch commit,
//! Arrow build + Parquet encode of 64k xDRs, and the xDR output of a 400k-call block alone. Setup stays out of the timing
//! (`iter_batched`); throughput is in elements.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ratel_engine::catalog::{load_rate_deck, Catalog};
use ratel_engine::config::{ConfigSource, LoadedConfig};
use ratel_engine::radius::codec;
use ratel_engine::rating::{rate_call, SessionCharge, Usage};
use ratel_engine::xdr::{self, XdrBuilder, XdrRow};
use rust_decimal::Decimal;

fn packet() -> Vec<u8> {
    codec::encode_request(
        7,
        &[
            (40, &3u32.to_be_bytes()),
            (1, b"user12345"),
            (44, b"81000123-0042"),
            (46, &600u32.to_be_bytes()),
            (42, &123_456_789u32.to_be_bytes()),
            (43, &987_654_321u32.to_be_bytes()),
            (52, &1u32.to_be_bytes()),
            (55, &1_793_620_800u32.to_be_bytes()),
            (4, &[10, 0, 0, 1]),
            (8, &[100, 64, 1, 2]),
            (31, b"aa:bb:cc:dd:ee:ff"),
        ],
        b"testing123",
    )
}

fn radius_decode(c: &mut Criterion) {
    let p = packet();
    let mut g = c.benchmark_group("radius_decode_verify");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ratel_zero_copy", |b| {
        b.iter(|| black_box(codec::decode(black_box(&p), b"testing123").is_ok()))
    });
    g.bench_function("radius_rs_peer", |b| {
        b.iter(|| {
            let ok =
                radius::core::packet::Packet::is_authentic_request(black_box(&p), b"testing123");
            let pkt = radius::core::packet::Packet::decode(black_box(&p), b"testing123").ok();
            black_box((ok, pkt))
        })
    });
    g.finish();
}

fn big_deck(n: usize) -> ratel_engine::catalog::Tariff {
    let mut s = String::from(
        "prefix,description,price_per_minute,connect_fee,first_increment,next_increment\n",
    );
    for i in 0..n {
        s.push_str(&format!(
            "{},d{i},0.0{},0.01,30,6\n",
            1_000_000 + i * 7,
            i % 10
        ));
    }
    load_rate_deck("big", "big.csv", &s).unwrap()
}

fn rating(c: &mut Criterion) {
    let deck = big_deck(100_000);
    let tz: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
    let mut g = c.benchmark_group("rating");
    g.throughput(Throughput::Elements(1));
    let mut scratch = Vec::new();
    g.bench_function("voip_cdr_100k_prefixes", |b| {
        b.iter(|| {
            black_box(rate_call(
                &deck,
                &tz,
                black_box("+1 000 700 1234"),
                1_793_620_800,
                187,
                true,
                &mut scratch,
            ))
        })
    });
    g.bench_function("prefix_lookup_100k", |b| {
        b.iter(|| black_box(deck.lookup(black_box(b"10006994455"))))
    });
    let cfg = LoadedConfig::from_str(
        ratel_engine::config::DEMO_CONFIG,
        ConfigSource::BuiltinDemo,
        ".".into(),
    )
    .unwrap();
    let cat = Catalog::build(&cfg).unwrap();
    let group = &cat.groups[0];
    let first = Usage {
        moment: 1_793_620_800,
        session_time: 0,
        octets_in: 0,
        octets_out: 0,
    };
    g.bench_function("internet_interim", |b| {
        b.iter_batched(
            || SessionCharge::new(&first),
            |mut s| {
                let u = Usage {
                    moment: 1_793_621_400,
                    session_time: 600,
                    octets_in: 123_456_789,
                    octets_out: 5_000_000,
                };
                black_box(s.apply(group, &cat.charge_rules, &cat.tz, &u))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn rows(n: usize) -> Vec<(u64, String, String)> {
    (0..n)
        .map(|i| {
            (
                i as u64 + 1,
                format!("acc{}", i % 5000),
                format!("c{i:010}"),
            )
        })
        .collect()
}

fn parquet_encode(c: &mut Criterion) {
    let n = 65_536;
    let data = rows(n);
    let mut g = c.benchmark_group("xdr");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    let build = |data: &[(u64, String, String)]| {
        let mut b = XdrBuilder::with_capacity(data.len());
        for (id, user, sid) in data {
            b.push(
                &XdrRow {
                    xdr_id: *id,
                    service_type: "VoIP",
                    status: "OK",
                    user_id: Some(*id as i64 % 5000),
                    username: user,
                    group_name: "bench",
                    login_time_secs: 1_793_620_800 + *id as i64,
                    logout_time_secs: 1_793_620_900 + *id as i64,
                    duration_seconds: 100,
                    billed_seconds: 102,
                    session_id: sid,
                    unique_id_value: sid,
                    called_number: "4930123456",
                    destination: "49",
                    destination_name: "Germany",
                    credit_used: Decimal::new(255, 4),
                    before_credit: Decimal::new(1000, 0),
                    after_credit: Decimal::new(99_974_500, 5),
                    source: "cdr:bench.csv:1",
                    ..Default::default()
                },
                &[],
            );
        }
        b.finish().unwrap()
    };
    g.bench_function("arrow_build_64k", |b| b.iter(|| black_box(build(&data))));
    let dir = tempfile::tempdir().unwrap();
    let batch = build(&data);
    g.bench_function("parquet_encode_fsync_64k", |b| {
        let mut k = 0;
        b.iter(|| {
            k += 1;
            let p = dir.path().join(format!("b{k}.parquet"));
            black_box(xdr::write_temp(&p, &batch).unwrap())
        })
    });
    // A CDR block's file (rows in username order, as the rater writes them), with the
    // small pages one-user reads want and with a block's wide pages; then one user's rows
    // read back as a report reads them (footer cached, the username page index narrowing
    // the rows), from each.
    let mut sorted = data.clone();
    sorted.sort_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0)));
    let batch = build(&sorted);
    for (name, page_rows) in [
        ("small_pages", xdr::PAGE_ROWS),
        ("wide_pages", xdr::WIDE_PAGE_ROWS),
    ] {
        g.bench_function(format!("parquet_encode_fsync_64k_{name}"), |b| {
            let mut k = 0;
            b.iter(|| {
                k += 1;
                let p = dir.path().join(format!("{name}{k}.parquet"));
                let batches = std::slice::from_ref(&batch);
                black_box(xdr::write_temp_batches(&p, batches, page_rows).unwrap())
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("report_read");
    g.sample_size(20);
    for (name, page_rows) in [
        ("small_pages", xdr::PAGE_ROWS),
        ("wide_pages", xdr::WIDE_PAGE_ROWS),
    ] {
        let p = dir.path().join(format!("read-{name}.parquet"));
        let t = xdr::write_temp_batches(&p, std::slice::from_ref(&batch), page_rows).unwrap();
        let meta = parquet::arrow::arrow_reader::ArrowReaderMetadata::load(
            &std::fs::File::open(&t).unwrap(),
            parquet::arrow::arrow_reader::ArrowReaderOptions::new()
                .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required),
        )
        .unwrap();
        let mut u = 0usize;
        g.bench_function(format!("one_user_of_5000_64k_{name}"), |b| {
            b.iter(|| {
                u = (u + 1237) % 5000;
                let user = format!("acc{u}");
                black_box(read_one_user(&t, &meta, &user))
            })
        });
    }
    g.finish();
}

/// The rows of `user` in one xDR file, read as a report reads them: the report's own
/// selection by the `username` page index (`ratel_api::report::username_pages`), every
/// column of those rows decoded.
fn read_one_user(
    path: &std::path::Path,
    meta: &parquet::arrow::arrow_reader::ArrowReaderMetadata,
    user: &str,
) -> usize {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let md = meta.metadata();
    let groups: Vec<usize> = (0..md.num_row_groups()).collect();
    let selection =
        ratel_api::report::username_pages(md, &groups, user).expect("the username page index");
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(
        std::fs::File::open(path).unwrap(),
        meta.clone(),
    )
    .with_row_selection(selection)
    .build()
    .unwrap();
    let mut n = 0;
    for b in reader {
        let b = b.unwrap();
        let names = b
            .column_by_name("username")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap()
            .clone();
        n += (0..b.num_rows())
            .filter(|&i| names.value(i) == user)
            .count();
    }
    assert!(n > 0, "{user}");
    n
}

/// A block's xDRs as the rater writes them: `n` calls of `users` subscribers over `days` UTC
/// days, one batch per day in (username, xdr_id) order, text of the sizes a Master.csv's
/// calls have (call ids, numbers, sources, a rate's name, one charge rule detail each).
fn block_of_calls(n: usize, users: usize, days: usize) -> Vec<(String, arrow_array::RecordBatch)> {
    const NAMES: [&str; 8] = [
        "Germany",
        "Germany Mobile",
        "France",
        "UK",
        "UK Mobile",
        "Spain",
        "Italy",
        "Poland",
    ];
    const PREFIXES: [&str; 8] = ["49", "4915", "33", "44", "447", "34", "39", "48"];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // (day, user, xdr id, random draw) sorted as the rater orders a block's xDRs.
    let mut calls: Vec<(usize, usize, u64, u64)> = (0..n)
        .map(|i| {
            let r = next();
            (
                (r % days as u64) as usize,
                (r >> 20) as usize % users,
                i as u64 + 1,
                next(),
            )
        })
        .collect();
    calls.sort_unstable();
    let mut out = Vec::new();
    for day in 0..days {
        let rows: Vec<_> = calls.iter().filter(|c| c.0 == day).collect();
        let mut b = XdrBuilder::with_capacity(rows.len());
        for &&(_, user, id, r) in &rows {
            let k = (r % 8) as usize;
            let secs = (r >> 8) as i64 % 1800;
            let start = 1_793_620_800 + day as i64 * 86_400 + (r >> 24) as i64 % 86_000;
            let call_id = format!("{}.{}", start, id % 1_000_000);
            let username = format!("user{user:06}");
            let caller = format!("+4930{:07}", user);
            let callee = format!("{}{:08}", PREFIXES[k], (r >> 32) % 100_000_000);
            let source = format!("cdr:cdrs.csv:{}", id + 1);
            let cost = Decimal::new(secs * (5 + k as i64), 4);
            let before = Decimal::new(1_000_000 - (r >> 40) as i64 % 900_000, 2);
            let detail = xdr::RuleDetail {
                rule: NAMES[k],
                start_secs: start,
                end_secs: start + secs,
                seconds: secs,
                bytes_in: 0,
                bytes_out: 0,
                credit: cost,
            };
            b.push(
                &XdrRow {
                    xdr_id: id,
                    service_type: "VoIP",
                    status: if secs == 0 { "UNANSWERED" } else { "OK" },
                    user_id: Some(user as i64 + 1),
                    username: &username,
                    group_name: "residential",
                    login_time_secs: start,
                    logout_time_secs: start + secs,
                    duration_seconds: secs,
                    billed_seconds: secs,
                    session_id: &call_id,
                    unique_id_value: &call_id,
                    caller_id: &caller,
                    called_number: &callee,
                    terminate_cause: if secs == 0 { "NO ANSWER" } else { "ANSWERED" },
                    destination: PREFIXES[k],
                    destination_name: NAMES[k],
                    credit_used: cost,
                    before_credit: before,
                    after_credit: before - cost,
                    source: &source,
                    account: Some(&caller),
                    ..Default::default()
                },
                std::slice::from_ref(&detail),
            );
        }
        out.push((format!("day{day}.parquet"), b.finish().unwrap()));
    }
    out
}

/// The xDR output alone, as a batch run writes a block's files (each day's file encoded
/// column by column on both cores, fsynced): what bounds `ratel rate`'s rows per second on
/// this machine whatever the rating costs. And a text column of only empty values, as
/// compaction (`interleave`) and exports (the Parquet reader) hand it to the writer, with
/// no memory for its values against with 64 bytes (`xdr::with_addressable_text`).
fn xdr_output(c: &mut Criterion) {
    let n = 400_000;
    let block = block_of_calls(n, 100_000, 6);
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("xdr_output");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    let mut k = 0;
    g.bench_function("block_of_400k_calls_6_days_fsync", |b| {
        b.iter_batched(
            || {
                k += 1;
                block
                    .iter()
                    .map(|(name, batch)| {
                        (dir.path().join(format!("{k}-{name}")), vec![batch.clone()])
                    })
                    .collect::<Vec<_>>()
            },
            |files| black_box(xdr::write_temp_files(files).unwrap()),
            BatchSize::PerIteration,
        )
    });
    g.finish();

    // One day's file read back: its empty text columns come with no memory for values.
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let t = xdr::write_temp(&dir.path().join("day.parquet"), &block[0].1).unwrap();
    let read: Vec<arrow_array::RecordBatch> =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&t).unwrap())
            .unwrap()
            .with_batch_size(1 << 20)
            .build()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let back = &read[0];
    let nas_ip = back.column_by_name("nas_ip").unwrap();
    let nas_ip = nas_ip
        .as_any()
        .downcast_ref::<arrow_array::StringArray>()
        .unwrap();
    assert_eq!(
        nas_ip.values().capacity(),
        0,
        "the reader gave memory to an empty column: nothing to measure"
    );
    let rows = back.num_rows();
    let mut g = c.benchmark_group("xdr_empty_text");
    g.throughput(Throughput::Elements(rows as u64));
    g.sample_size(10);
    for (name, batch) in [
        ("as_read", back.clone()),
        ("with_memory", xdr::with_addressable_text(back)),
    ] {
        g.bench_function(format!("one_day_{name}"), |b| {
            b.iter(|| {
                let props = xdr::writer_properties(rows, xdr::PAGE_ROWS);
                let mut w = parquet::arrow::ArrowWriter::try_new(
                    std::io::sink(),
                    batch.schema(),
                    Some(props),
                )
                .unwrap();
                w.write(&batch).unwrap();
                black_box(w.close().unwrap())
            })
        });
    }
    g.finish();
}

fn ledger_commit(c: &mut Criterion) {
    use ratel_engine::domain::NewClient;
    use ratel_engine::ledger::{Ledger, RadiusCommit};
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(dir.path()).unwrap();
    let users: Vec<NewClient> = (0..1000)
        .map(|i| NewClient {
            username: Some(format!("u{i}")),
            group: "g".into(),
            credit: Decimal::from(100),
            ..Default::default()
        })
        .collect();
    ledger.add_clients(&users, "bench", 0).unwrap();
    let mut g = c.benchmark_group("ledger");
    g.throughput(Throughput::Elements(512));
    g.sample_size(20);
    let mut seq = 0u64;
    g.bench_function("radius_batch_512_updates_fsync", |b| {
        b.iter_batched(
            || {
                seq += 1;
                RadiusCommit {
                    charges: (0..512)
                        .map(|i| {
                            (
                                1 + (i % 1000) as i64,
                                Decimal::new(5, 3),
                                Decimal::from(99),
                                format!("b:{seq}:{i}"),
                                None,
                            )
                        })
                        .collect(),
                    upserts: (0..512)
                        .map(|i| {
                            (
                                "nas".to_string(),
                                format!("s{i}"),
                                // the size of a packed session state
                                vec![1u8; 130],
                            )
                        })
                        .collect(),
                    now: 1,
                    next_xdr: 1,
                    ..Default::default()
                }
            },
            |c| ledger.commit_radius(&c).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    radius_decode,
    rating,
    parquet_encode,
    xdr_output,
    ledger_commit
);
criterion_main!(benches);
