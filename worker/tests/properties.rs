//! Property tests over random inputs: every row is accounted for (conservation), and the same input and run id
//! always give byte-identical files (determinism).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use proptest::prelude::*;
use silverline_worker::run::{RunArgs, RunControl, run};
use support::*;
use tempfile::TempDir;

/// One CSV line, drawn from valid rows over a small key space (so keys repeat), every kind of broken row,
/// awkward quoting, and repeats of earlier lines.
fn line() -> impl Strategy<Value = String> {
    let id = (0u8..40).prop_map(|i| format!("T{i}"));
    let amount = prop_oneof![
        (0u32..100_000, 0u8..100).prop_map(|(w, f)| format!("{w}.{f:02}")),
        Just("12.345".to_owned()),
        Just("abc".to_owned()),
        Just(String::new()),
    ];
    let currency = prop_oneof![Just("EUR"), Just("USD"), Just("JPY"), Just("usd"), Just("")];
    let ts = prop_oneof![
        Just("2024-01-31T23:30:00-02:00"),
        Just("2024-02-29T12:00:00Z"),
        Just("2023-07-01T00:00:00"),
        Just("2023-02-29T00:00:00Z"),
        Just("2024-01-15 10:00:00"),
    ];
    let customer = prop_oneof![
        Just("C1".to_owned()),
        Just("\"C, 2\"".to_owned()),
        Just("  C3 ".to_owned()),
        Just("\"a\"\"b\nc\"".to_owned())
    ];
    let row = (id, customer, amount, currency, ts).prop_map(|(i, c, a, cur, t)| format!("{i},{c},{a},{cur},{t}"));
    prop_oneof![8 => row, 1 => Just("short,row".to_owned()), 1 => Just("T1,C,1.00,EUR,2024-01-01T00:00:00Z,extra".to_owned())]
}

fn input() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(line(), 0..120).prop_flat_map(|lines| {
        let n = lines.len();
        // Repeat some earlier lines verbatim, to make exact duplicates.
        prop::collection::vec(0..n.max(1), 0..(n / 4 + 1)).prop_map(move |picks| {
            let mut all = lines.clone();
            for p in picks {
                if let Some(l) = lines.get(p) {
                    all.push(l.clone());
                }
            }
            all
        })
    })
}

fn run_into(
    contract: &std::path::Path,
    input: &std::path::Path,
    lake: &std::path::Path,
    runtime: &tokio::runtime::Runtime,
) -> silverline_crds::report::RunReport {
    let args = RunArgs {
        contract: contract.to_path_buf(),
        input: input.display().to_string(),
        lake: Some(lake.display().to_string()),
        run_id: Some("prop".into()),
        threads: Some(2),
        ..RunArgs::default()
    };
    run(&args, runtime.handle(), &RunControl::default()).expect("the run succeeds").report
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn every_row_is_accounted_for_and_runs_are_deterministic(lines in input()) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let tmp = TempDir::new().unwrap();
        let contract = contract(tmp.path(), &[("maxQuarantineRate: 0.01", "maxQuarantineRate: 1.0"), ("maxSameErrors: 100", "maxSameErrors: 100000")]);
        let text = format!("{HEADER}\n{}\n", lines.join("\n"));
        let input = write(tmp.path(), "in.csv", &text);
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let report = run_into(&contract, &input, &a, &runtime);

        // The tokenizer's view of the record count, independently: the csv crate.
        let expected = csv::ReaderBuilder::new().flexible(true).from_reader(text.as_bytes()).records().count() as u64;
        prop_assert_eq!(report.input_rows, expected);
        prop_assert_eq!(report.input_rows, report.valid_rows_count + report.quarantined_rows_count + report.condemned_rows_count);
        prop_assert_eq!(rows(&read_area(&a, "silver", "prop")) as u64, report.valid_rows_count);
        prop_assert_eq!(rows(&read_area(&a, "quarantine", "prop")) as u64, report.quarantined_rows_count);
        prop_assert_eq!(rows(&read_area(&a, "condemned", "prop")) as u64, report.condemned_rows_count);
        // Valid keys are unique.
        let mut keys: Vec<String> = strings(&read_area(&a, "silver", "prop"), "TransactionID").into_iter().flatten().collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        prop_assert_eq!(keys.len(), n);

        let again = run_into(&contract, &input, &b, &runtime);
        prop_assert_eq!(&again.files.iter().map(|f| (f.rows, f.sha256.clone())).collect::<Vec<_>>(),
                        &report.files.iter().map(|f| (f.rows, f.sha256.clone())).collect::<Vec<_>>());
    }
}
