//! The `corepool` command end to end: runs the built binary with tiny sizes
//! and checks the structure of what it prints (never how fast anything was).

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

/// Longest one run of the binary may take before its watchdog fails the test.
const LIMIT: Duration = Duration::from_secs(300);

fn corepool(args: &[&str]) -> Output {
    common::output_within(
        Command::new(env!("CARGO_BIN_EXE_corepool"))
            .args(args)
            .env_remove("COREPOOL_PYTHON"),
        LIMIT,
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs and expects success; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = corepool(args);
    assert!(
        out.status.success(),
        "corepool {args:?} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs and expects a clean failure (no panic); returns stderr.
fn fails(args: &[&str]) -> String {
    let out = corepool(args);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "corepool {args:?} should fail\nstdout:\n{}",
        text(&out.stdout)
    );
    assert!(
        !err.contains("panicked"),
        "corepool {args:?} panicked:\n{err}"
    );
    err
}

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn has_python() -> bool {
    Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("corepool-cli-{}-{name}", std::process::id()))
}

const ROW_KEYS: [&str; 19] = [
    "workload",
    "system",
    "workers",
    "items",
    "seconds",
    "rate",
    "unit",
    "lower_is_better",
    "repeats",
    "rate_min",
    "rate_max",
    "seconds_min",
    "seconds_max",
    "cpu_model",
    "cpus",
    "cores",
    "packages",
    "allowed",
    "pinning",
];

fn check_row(row: &serde_json::Value) {
    for key in ROW_KEYS {
        assert!(row.get(key).is_some(), "row lacks `{key}`: {row}");
    }
    let (min, med, max) = (
        row["rate_min"].as_f64().unwrap(),
        row["rate"].as_f64().unwrap(),
        row["rate_max"].as_f64().unwrap(),
    );
    assert!(min <= med && med <= max, "median outside its range: {row}");
    assert!(med > 0.0, "{row}");
}

#[test]
fn bench_json_rows_carry_repeats_and_the_machine() {
    let rows = json_lines(&ok(&[
        "bench", "--quick", "--only", "latency", "--json", "--repeat", "2",
    ]));
    let systems: Vec<&str> = rows.iter().map(|r| r["system"].as_str().unwrap()).collect();
    assert_eq!(systems, ["corepool", "threads"]);
    for r in &rows {
        check_row(r);
        assert_eq!(r["workload"], "latency");
        assert_eq!(r["unit"], "ns");
        assert_eq!(r["lower_is_better"], true, "rate is a median time");
        assert!(
            r["load_1m"].as_f64().is_some(),
            "the load it ran under: {r}"
        );
        assert_eq!(r["repeats"], 2);
    }
    assert!(rows[0]["pinning"].as_str().unwrap().starts_with("per-cpu"));
}

#[test]
fn bench_queue_and_pipe_rtt_rows() {
    let rows = json_lines(&ok(&[
        "bench",
        "--quick",
        "--only",
        "queue,pipe_rtt",
        "--repeat",
        "1",
        "--size",
        "1000",
        "--json",
    ]));
    // Rows come in the order the workloads run (each printed once
    // measured): pipe_rtt's before queue's.
    let corepool: Vec<&serde_json::Value> =
        rows.iter().filter(|r| r["system"] == "corepool").collect();
    assert_eq!(corepool.len(), 2, "{rows:?}");
    assert_eq!(corepool[0]["workload"], "pipe_rtt");
    assert_eq!(corepool[0]["unit"], "ns");
    assert_eq!(corepool[1]["workload"], "queue");
    assert_eq!(corepool[1]["unit"], "messages/s");
    for r in &rows {
        check_row(r);
        assert_eq!(r["items"], 1000);
        assert_eq!(r["workers"], 1);
    }
}

#[test]
fn bench_start_respawn_and_bulk_rows() {
    // Their counts are fixed (--quick: 3 starts, 10 kills, 8 tasks of 8
    // MiB): --size given with only these is refused (exit 2, see
    // every_bad_command_line_exits_2).
    let rows = json_lines(&ok(&[
        "bench",
        "--quick",
        "--only",
        "start,respawn,bulk,bulk_shared",
        "--repeat",
        "1",
        "--json",
    ]));
    let shape: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["workload"].as_str().unwrap(),
                r["system"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("start", "corepool"),
            ("start", "corepool-spawn"),
            ("start", "corepool-first"),
            ("start", "threads"),
            ("respawn", "corepool"),
            ("respawn", "corepool-spawn"),
            ("bulk", "corepool"),
            ("bulk", "threads"),
            ("bulk_shared", "corepool"),
            ("bulk_shared", "threads"),
        ],
        "{rows:?}"
    );
    for r in &rows {
        check_row(r);
        match r["workload"].as_str().unwrap() {
            "start" => {
                assert_eq!(r["unit"], "ms");
                // A program's first pool is timed once per run.
                let first = r["system"] == "corepool-first";
                assert_eq!(r["items"], if first { 1 } else { 3 });
                assert_eq!(r["workers"], rows[0]["workers"]);
            }
            "respawn" => {
                assert_eq!(r["unit"], "ms");
                assert_eq!(r["items"], 10);
                assert_eq!(r["workers"], 1);
                let p99 = r["p99"].as_f64().expect("respawn has a p99");
                assert!(p99 >= r["rate"].as_f64().unwrap(), "{r}");
            }
            workload => {
                assert_eq!(r["unit"], "B/s");
                assert_eq!(r["items"], 8);
                if workload == "bulk" && r["system"] == "threads" {
                    // The baseline copies each vector for its task, as
                    // corepool's tasks get copies: not a moved pointer.
                    let note = r["note"]
                        .as_str()
                        .expect("the threads bulk row says what it does");
                    assert!(note.contains("own copy"), "{r}");
                }
            }
        }
    }
    // A lower time is better: corepool's start ratio is threads' ms over its own.
    let start = &rows[0];
    let threads = &rows[3];
    let expect = threads["rate"].as_f64().unwrap() / start["rate"].as_f64().unwrap();
    let got = start["vs_threads"].as_f64().unwrap();
    assert!((got - expect).abs() <= 1e-9 * expect.max(1.0), "{start}");
}

#[test]
fn apply_async_has_a_threads_spawn_baseline() {
    let out = ok(&[
        "bench",
        "--quick",
        "--only",
        "apply_async",
        "--size",
        "2000",
        "--repeat",
        "1",
        "--json",
    ]);
    let rows = json_lines(&out);
    let systems: Vec<&str> = rows.iter().map(|r| r["system"].as_str().unwrap()).collect();
    assert_eq!(systems, ["corepool", "threads", "threads-spawn"]);
    for r in &rows {
        check_row(r);
        assert_eq!(r["unit"], "tasks/s");
        assert_eq!(r["items"], 2000);
    }
    assert!(rows[0]["vs_threads_spawn"].as_f64().unwrap() > 0.0);
    assert!(rows[2]["note"].as_str().unwrap().contains("scope"));
    // The table says how far corepool is from it.
    let table = ok(&[
        "bench",
        "--quick",
        "--only",
        "apply_async",
        "--size",
        "2000",
        "--repeat",
        "1",
    ]);
    assert!(table.contains("threads-spawn"), "{table}");
    assert!(table.contains("apply_async: corepool runs"), "{table}");
}

#[test]
fn vs_python_times_pool_starts_with_fork_and_spawn_and_bulk() {
    if !has_python() {
        return; // the missing-interpreter path is tested below
    }
    let rows = json_lines(&ok(&[
        "bench",
        "--quick",
        "--only",
        "start,respawn,bulk",
        "--repeat",
        "1",
        "--json",
        "--vs-python",
    ]));
    let py: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r["system"].as_str().unwrap().starts_with("python"))
        .map(|r| {
            (
                r["workload"].as_str().unwrap(),
                r["system"].as_str().unwrap(),
            )
        })
        .collect();
    // respawn has no Python row.
    assert_eq!(
        py,
        [
            ("start", "python-mp"),
            ("start", "python-mp-spawn"),
            ("bulk", "python-mp"),
        ],
        "{rows:?}"
    );
    for r in &rows {
        check_row(r);
    }
    let spawn = rows
        .iter()
        .find(|r| r["system"] == "python-mp-spawn")
        .unwrap();
    assert!(
        spawn["note"].as_str().unwrap().contains("(spawn)"),
        "{spawn}"
    );
    let fork = rows.iter().find(|r| r["system"] == "python-mp").unwrap();
    assert!(fork["note"].as_str().unwrap().contains("(fork)"), "{fork}");
    for r in rows.iter().filter(|r| r["system"] == "corepool") {
        if r["workload"] != "respawn" {
            assert!(r["vs_python"].as_f64().unwrap() > 0.0, "{r}");
        }
    }
}

#[test]
fn bench_table_states_machine_pinning_and_runs() {
    let out = ok(&[
        "bench",
        "--quick",
        "--only",
        "latency",
        "--repeat",
        "1",
        "--pinning",
        "none",
    ]);
    assert!(out.contains("machine:"), "{out}");
    assert!(out.contains("allowed set"), "{out}");
    assert!(out.contains("pinning none: unpinned"), "{out}");
    assert!(
        out.contains("1 measured per row after 1 warm-up run"),
        "{out}"
    );
    assert!(out.contains("vs threads"), "{out}");
    assert!(out.contains("(1 min)"), "the load: {out}");
}

#[test]
fn vs_python_adds_python_rows_and_ratios() {
    if !has_python() {
        // The other path is tested below; here there is nothing to compare.
        let err = text(&corepool(&["bench", "--quick", "--only", "latency", "--vs-python"]).stderr);
        assert!(err.contains("no Python interpreter"), "{err}");
        return;
    }
    let rows = json_lines(&ok(&[
        "bench",
        "--quick",
        "--only",
        "cpu_loop,shared_sum",
        "--size",
        "20000",
        "--json",
        "--repeat",
        "1",
        "--vs-python",
    ]));
    let py: Vec<_> = rows.iter().filter(|r| r["system"] == "python-mp").collect();
    assert_eq!(py.len(), 2, "{rows:?}");
    for r in &py {
        check_row(r);
        assert!(r["pinning"].as_str().unwrap().contains("multiprocessing"));
    }
    for r in rows.iter().filter(|r| r["system"] == "corepool") {
        assert!(r["vs_python"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["vs_threads"].as_f64().unwrap() > 0.0, "{r}");
    }
    let sum = py.iter().find(|r| r["workload"] == "shared_sum").unwrap();
    assert_eq!(sum["unit"], "elements/s");
    assert!(
        sum["note"].as_str().unwrap().contains("numpy"),
        "the row says whether numpy summed: {sum}"
    );
    // The table shows the ratio column.
    let out = ok(&[
        "bench",
        "--quick",
        "--only",
        "latency",
        "--repeat",
        "1",
        "--vs-python",
    ]);
    assert!(out.contains("vs python"), "{out}");
    assert!(out.contains("python-mp"), "{out}");
}

#[test]
fn vs_python_without_python_installed_says_so_and_succeeds() {
    // No `python3` on the PATH: the default interpreter is missing, which
    // skips the baseline with a warning.
    let empty = temp("no-python-path");
    std::fs::create_dir_all(&empty).unwrap();
    let out = common::output_within(
        Command::new(env!("CARGO_BIN_EXE_corepool"))
            .args([
                "bench",
                "--quick",
                "--only",
                "latency",
                "--json",
                "--repeat",
                "1",
                "--vs-python",
            ])
            .env_remove("COREPOOL_PYTHON")
            .env("PATH", &empty),
        LIMIT,
    );
    let _ = std::fs::remove_dir(&empty);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("no Python interpreter at `python3`"), "{err}");
    assert!(err.contains("rows are skipped"), "{err}");
    assert!(err.contains("--python"), "says what to do: {err}");
    let rows = json_lines(&text(&out.stdout));
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["system"] != "python-mp"));
}

#[test]
fn a_named_python_that_is_missing_is_an_error_as_a_failing_one_is() {
    // The user named the interpreter: a wrong path fails the command as
    // `/bin/false` (below) does, before anything is measured.
    let out = corepool(&[
        "bench",
        "--quick",
        "--only",
        "latency",
        "--json",
        "--repeat",
        "1",
        "--vs-python",
        "--python",
        "/nonexistent/python3",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("no Python interpreter at `/nonexistent/python3`"),
        "{err}"
    );
    assert!(err.contains("--python"), "says what to do: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let rows = json_lines(&text(&out.stdout));
    assert!(rows.is_empty(), "checked before measuring: {rows:?}");
    // The same through the environment.
    let out = common::output_within(
        Command::new(env!("CARGO_BIN_EXE_corepool"))
            .args([
                "bench",
                "--quick",
                "--only",
                "latency",
                "--repeat",
                "1",
                "--vs-python",
            ])
            .env("COREPOOL_PYTHON", "/nonexistent/python3"),
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("no Python interpreter"), "{err}");
    assert!(err.contains("$COREPOOL_PYTHON"), "{err}");
}

#[test]
fn a_failing_python_is_an_error_before_anything_is_measured() {
    let out = corepool(&[
        "bench",
        "--quick",
        "--only",
        "latency",
        "--repeat",
        "1",
        "--vs-python",
        "--python",
        "/bin/false",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("Python baseline failed"), "{err}");
    assert!(err.contains("nothing was measured"), "{err}");
    assert!(err.contains("(it printed nothing on stderr)"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(text(&out.stdout), "", "checked before measuring");
}

#[test]
fn an_empty_python_setting_means_unset() {
    // `COREPOOL_PYTHON=` and `--python ''` are the default `python3`, which
    // is missing from this PATH: a warning, not "no interpreter at ``".
    let empty = temp("empty-python-setting");
    std::fs::create_dir_all(&empty).unwrap();
    let out = common::output_within(
        Command::new(env!("CARGO_BIN_EXE_corepool"))
            .args([
                "bench",
                "--quick",
                "--only",
                "latency",
                "--json",
                "--repeat",
                "1",
                "--vs-python",
                "--python",
                "",
            ])
            .env("COREPOOL_PYTHON", "")
            .env("PATH", &empty),
        LIMIT,
    );
    let _ = std::fs::remove_dir(&empty);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("no Python interpreter at `python3`"), "{err}");
}

#[test]
fn a_hanging_python_is_killed_at_its_timeout() {
    use std::os::unix::fs::PermissionsExt;
    // An "interpreter" that never answers, with a child of its own (as
    // Python's pool workers are).
    let fake = temp("hang.sh");
    std::fs::write(&fake, "#!/bin/sh\nsleep 300 &\nwait\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = corepool(&[
        "bench",
        "--quick",
        "--only",
        "latency",
        "--size",
        "100",
        "--repeat",
        "1",
        "--vs-python",
        "--python",
        fake.to_str().unwrap(),
        "--python-timeout",
        "1",
    ]);
    let _ = std::fs::remove_file(&fake);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("ran longer than 1s and was killed"), "{err}");
}

#[test]
fn python_options_need_vs_python() {
    let err = fails(&["bench", "--python", "python3"]);
    assert!(err.contains("--vs-python"), "{err}");
}

/// Checks that every opened tag is closed in order (enough for the SVG we write).
fn assert_well_formed(svg: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').expect("unclosed tag") + start;
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.trim()),
                "mismatched </{name}>"
            );
        } else if !tag.ends_with('/') {
            let name: String = tag.chars().take_while(|c| !c.is_whitespace()).collect();
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    assert!(
        !svg.contains("NaN") && !svg.contains("inf"),
        "non-numbers in the SVG"
    );
}

#[test]
fn scale_reports_efficiency_and_plots_every_curve() {
    let path = temp("scale.svg");
    let p = path.to_str().unwrap();
    let rows = json_lines(&ok(&[
        "bench",
        "--quick",
        "--scale",
        "--only",
        "apply_async,cpu_loop",
        "--size",
        "5000",
        "--repeat",
        "1",
        "--workers",
        "2",
        "--json",
        "--plot",
        p,
    ]));
    // 2 workloads x 2 systems x 2 counts.
    assert_eq!(rows.len(), 8, "{rows:?}");
    for r in &rows {
        check_row(r);
        assert!(r["speedup"].as_f64().is_some(), "{r}");
        assert!(r["efficiency"].as_f64().is_some(), "{r}");
        if r["workers"] == 1 {
            assert_eq!(r["speedup"].as_f64(), Some(1.0));
        }
    }
    let svg = std::fs::read_to_string(&path).expect("the plot was written");
    let _ = std::fs::remove_file(&path);
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_well_formed(&svg);
    // Each (workload, system) curve in the throughput and efficiency panels.
    assert_eq!(
        svg.matches(r#"<polyline class="curve""#).count(),
        8,
        "{svg}"
    );
    for system in ["corepool", "threads"] {
        assert!(svg.contains(&format!(r#"data-system="{system}""#)));
    }
}

#[test]
fn an_unwritable_plot_fails_before_the_sweep() {
    let out = corepool(&[
        "bench",
        "--quick",
        "--scale",
        "--only",
        "cpu_loop",
        "--size",
        "1000",
        "--repeat",
        "1",
        "--workers",
        "1",
        "--json",
        "--plot",
        "/nonexistent/x.svg",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("writing /nonexistent/x.svg failed"), "{err}");
    assert!(err.contains("directory exists"), "says what to do: {err}");
    // Nothing was measured, so no row was printed.
    assert_eq!(text(&out.stdout), "", "the sweep ran first");
    // A directory is no plot file either.
    let dir = temp("plot-dir");
    std::fs::create_dir_all(dir.join("x.svg")).unwrap();
    let err = fails(&[
        "bench",
        "--quick",
        "--scale",
        "--only",
        "cpu_loop",
        "--size",
        "1000",
        "--repeat",
        "1",
        "--workers",
        "1",
        "--plot",
        dir.join("x.svg").to_str().unwrap(),
    ]);
    assert!(err.contains("it is a directory"), "{err}");
    // A plot that can be written is, and nothing else is left beside it.
    std::fs::remove_dir(dir.join("x.svg")).unwrap();
    ok(&[
        "bench",
        "--quick",
        "--scale",
        "--only",
        "cpu_loop",
        "--size",
        "1000",
        "--repeat",
        "1",
        "--workers",
        "1",
        "--plot",
        dir.join("x.svg").to_str().unwrap(),
    ]);
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["x.svg"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn scale_table_has_efficiency_columns() {
    let out = ok(&[
        "bench", "--quick", "--scale", "--only", "cpu_loop", "--size", "100000", "--repeat", "1",
    ]);
    assert!(out.contains("efficiency"), "{out}");
    assert!(out.contains("speedup"), "{out}");
}

#[test]
fn pin_json_sweeps_layouts_and_recommends_one() {
    let out = ok(&[
        "pin",
        "--json",
        "--quick",
        "--workload",
        "latency",
        "--size",
        "200",
        "--repeat",
        "2",
        "--cpus",
        "0",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    for key in [
        "cpus",
        "caches",
        "numa_nodes",
        "packages",
        "cores",
        "smt",
        "allowed",
    ] {
        assert!(v["topology"].get(key).is_some(), "topology lacks {key}");
    }
    let layouts = v["layouts"].as_array().unwrap();
    let names: Vec<&str> = layouts
        .iter()
        .map(|l| l["layout"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "none",
            "per-cpu",
            "compact",
            "scatter",
            "avoid-smt",
            "cpus:0"
        ]
    );
    for l in layouts {
        assert!(l["median"].as_f64().unwrap() > 0.0, "{l}");
        assert!(l["rust"].as_str().unwrap().starts_with("Pinning::"));
    }
    let rec = &v["recommendation"];
    assert!(names.contains(&rec["layout"].as_str().unwrap()), "{rec}");
    assert!(rec["builder"]
        .as_str()
        .unwrap()
        .starts_with("Pool::builder()"));
    assert!(rec["margin_over_runner_up"].as_f64().is_some(), "{rec}");
    assert!(!rec["summary"].as_str().unwrap().is_empty());
    assert_eq!(v["unit"], "ns");
}

#[test]
fn pin_shows_the_topology() {
    let out = ok(&["pin", "--topology"]);
    for word in ["CPU model", "SMT siblings", "package", "allowed"] {
        assert!(out.contains(word), "lacks {word}: {out}");
    }
    let v: serde_json::Value =
        serde_json::from_str(ok(&["pin", "--topology", "--json"]).trim()).unwrap();
    assert!(!v["cpus"].as_array().unwrap().is_empty());
}

#[test]
fn bad_input_is_a_message_that_says_what_to_do() {
    let err = fails(&["bench", "--only", "nope"]);
    assert!(
        err.contains("unknown workload `nope`: choose from"),
        "{err}"
    );
    let err = fails(&["bench", "--quick", "--repeat", "0"]);
    assert!(err.contains("--repeat must be at least 1"), "{err}");
    let err = fails(&[
        "bench",
        "--quick",
        "--only",
        "latency",
        "--vs-python",
        "--python-timeout",
        "0",
    ]);
    assert!(
        err.contains("--python-timeout must be at least 1 second"),
        "{err}"
    );
    let err = fails(&["bench", "--workers", "0"]);
    assert!(err.contains("at least 1"), "{err}");
    let err = fails(&["bench", "--pinning", "sideways"]);
    assert!(err.contains("per-cpu"), "{err}");
    let err = fails(&["bench", "--plot", "x.svg"]);
    assert!(err.contains("--scale"), "{err}");
    let err = fails(&["bench", "--scale", "--plot", "x.png"]);
    assert!(err.contains(".svg"), "{err}");
    let err = fails(&["bench", "--scale", "--only", "latency"]);
    assert!(err.contains("latency"), "{err}");
    let err = fails(&["bench", "--scale", "--only", "start"]);
    assert!(err.contains("start times starting workers"), "{err}");
    // bulk runs on the default pool (its arguments spill), so it scales;
    // a workload between two processes does not.
    let err = fails(&["bench", "--scale", "--only", "queue"]);
    assert!(err.contains("queue runs between two processes"), "{err}");
    let err = fails(&["bench", "--pinning", "4096"]);
    assert!(err.contains("allowed set"), "{err}");
    let err = fails(&["pin", "--workload", "nope"]);
    assert!(err.contains("choose from"), "{err}");
    let err = fails(&["pin", "--cpus", "4096"]);
    assert!(err.contains("allowed set"), "{err}");
    let err = fails(&["pin", "--cpus", "x-y"]);
    assert!(err.contains("CPU list"), "{err}");
    let err = fails(&["pin", "--layouts", "0,1"]);
    assert!(err.contains("--layouts"), "{err}");
    let err = fails(&["pin", "--size", "0"]);
    assert!(err.contains("--size"), "{err}");
    let err = fails(&["bench", "--size", "0"]);
    assert!(err.contains("--size"), "{err}");
}

#[test]
fn every_bad_command_line_exits_2() {
    // Refused by clap or by the command: the same status, so that a script
    // can tell a mistyped command from a run that failed (1).
    for args in [
        &["bench", "--pinning", "foo"][..],
        &["pin", "--layouts", "foo"],
        &["bench", "--size", "0"],
        &["bench", "--repeat", "0"],
        &["bench", "--workers", "0"],
        &["bench", "--scale", "--plot", "x.png"],
        &["bench", "--only", "foo"],
        &["bench", "--scale", "--only", "latency"],
        &["pin", "--workload", "queue"],
        &["soak", "--tasks", "0"],
        &["bench", "--quik"],
        &["bench", "--size", "-1"],
        &["soak", "--retries", "-1"],
        // Beyond the library's limit of workers per pool: refused by the
        // command before anything runs, not a failed run (trial25 F4).
        &["bench", "--workers", "100000", "--quick"],
        &["bench", "--scale", "--workers", "4097", "--only", "map"],
        &["pin", "--workers", "4097", "--quick"],
        &["soak", "--workers", "0"],
        &["soak", "--workers", "4097"],
        // --size with only workloads of fixed counts sizes nothing.
        &["bench", "--only", "start", "--size", "5", "--quick"],
        &["bench", "--only", "respawn,bulk,bulk_shared", "--size", "5"],
    ] {
        let out = corepool(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn pin_sweeps_only_the_workloads_its_help_lists() {
    let help = ok(&["pin", "--help"]);
    let listed = "apply_async, map, latency, cpu_loop or shared_sum";
    assert!(help.contains(listed), "{help}");
    for w in [
        "start",
        "respawn",
        "bulk",
        "bulk_shared",
        "queue",
        "pipe_rtt",
    ] {
        let err = fails(&["pin", "--quick", "--workload", w]);
        assert!(err.contains(listed), "{w}: {err}");
        assert!(!err.contains("round trips"), "{w}: {err}");
    }
}

#[test]
fn a_size_that_cannot_fit_is_refused_naming_size() {
    // Far beyond any machine's memory: refused before anything is
    // allocated, never an allocation failure's abort (exit 134).
    for w in ["map", "apply_async", "latency", "shared_sum"] {
        let out = corepool(&[
            "bench",
            "--only",
            w,
            "--size",
            "1000000000000000",
            "--repeat",
            "1",
        ]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{w}: {err}");
        assert!(
            err.contains("--size 1000000000000000 needs about"),
            "{w}: {err}"
        );
        assert!(err.contains("give a smaller --size"), "{w}: {err}");
        assert_eq!(text(&out.stdout), "", "{w}: nothing was measured");
    }
    let err = fails(&["pin", "--workload", "map", "--size", "18446744073709551615"]);
    assert!(err.contains("--size 18446744073709551615 needs"), "{err}");
}

#[test]
fn a_signal_mid_sweep_leaves_no_temporary_plot_file() {
    use std::os::unix::process::ExitStatusExt;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let dir = temp(&format!("plot-signal-{signal}"));
        std::fs::create_dir_all(&dir).unwrap();
        let plot = dir.join("x.svg");
        // Long enough to be interrupted: the signal ends it.
        let mut child = Command::new(env!("CARGO_BIN_EXE_corepool"))
            .args([
                "bench",
                "--scale",
                "--only",
                "cpu_loop",
                "--size",
                "100000000000",
                "--workers",
                "1",
                "--plot",
                plot.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let entries = || std::fs::read_dir(&dir).unwrap().count();
        common::eventually("the temporary plot file exists", || entries() == 1);
        // SAFETY: kill has no memory preconditions; the pid is our unreaped
        // child's.
        unsafe { libc::kill(child.id() as i32, signal) };
        let (tx, rx) = std::sync::mpsc::channel();
        let waited = std::thread::spawn(move || {
            let status = child.wait();
            let _ = tx.send(());
            status
        });
        if rx.recv_timeout(LIMIT).is_err() {
            panic!("the signal did not end the sweep");
        }
        let status = waited.join().unwrap().unwrap();
        assert_eq!(status.signal(), Some(signal), "{status:?}");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn rows_are_printed_as_measured_and_a_gone_reader_ends_the_run() {
    use std::io::BufRead;
    // cpu_loop runs before map, and is quick at this size; map then takes
    // a while. Streamed, cpu_loop's rows come first, the reader takes one
    // and goes, as `| head -1` does, and map's first row finds it gone:
    // 141. Printed at the end (as before), every row fitted in the pipe
    // before the reader read any, and the run exited 0.
    let mut child = Command::new(env!("CARGO_BIN_EXE_corepool"))
        .args([
            "bench",
            "--quick",
            "--only",
            "cpu_loop,map",
            "--size",
            "10000000",
            "--repeat",
            "1",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let first = {
        let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line
    }; // the reader goes away here
    let row: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(row["workload"], "cpu_loop", "{first}");
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id() as i32;
    let waited = std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(());
        status
    });
    if rx.recv_timeout(LIMIT).is_err() {
        // SAFETY: kill has no memory preconditions; the pid is our child's,
        // not yet reaped (its waiter has not returned).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = waited.join();
        panic!("the run went on after its reader had gone");
    }
    let status = waited.join().unwrap().unwrap();
    assert_eq!(status.code(), Some(141), "quietly, as SIGPIPE would");
}

#[test]
fn negative_counts_and_near_miss_workloads_get_useful_messages() {
    let err = fails(&["bench", "--size", "-1"]);
    assert!(err.contains("invalid value '-1' for '--size"), "{err}");
    assert!(err.contains("must be at least 1"), "{err}");
    let err = fails(&["bench", "--workers", "-2"]);
    assert!(err.contains("must be at least 1"), "{err}");
    let err = fails(&["soak", "--kill-every-ms", "-5"]);
    assert!(err.contains("must be 0 or more"), "{err}");
    let err = fails(&["bench", "--workers", "100000", "--quick"]);
    assert!(err.contains("must be at most 4096"), "{err}");
    assert!(
        !err.contains("invalid configuration"),
        "the command's own words: {err}"
    );
    let err = fails(&["soak", "--workers", "0"]);
    assert!(err.contains("must be at least 1"), "{err}");
    let err = fails(&["bench", "--only", "start,bulk", "--size", "5", "--quick"]);
    assert!(
        err.contains("--size 5 sizes nothing here: start, bulk run fixed counts"),
        "{err}"
    );
    let many = vec!["0"; 4097].join(",");
    let err = fails(&["pin", "--quick", "--cpus", &many]);
    assert!(err.contains("--cpus (a list of 4097)"), "{err}");
    assert!(err.contains("limit of 4096"), "{err}");
    let err = fails(&["bench", "--only", "apply-async"]);
    assert!(err.contains("did you mean `apply_async`?"), "{err}");
    let err = fails(&["pin", "--workload", "cpu-loop"]);
    assert!(err.contains("did you mean `cpu_loop`?"), "{err}");
}

#[test]
fn a_python_that_hangs_in_the_script_is_shown_with_its_arguments() {
    use std::os::unix::fs::PermissionsExt;
    // Passes the interpreter check (`-c ...`), then hangs in the script.
    let fake = temp("hang-in-script.sh");
    std::fs::write(
        &fake,
        "#!/bin/sh\nif [ \"$1\" = -c ]; then exit 0; fi\nsleep 300 &\nwait\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = corepool(&[
        "bench",
        "--quick",
        "--only",
        "latency",
        "--size",
        "100",
        "--repeat",
        "1",
        "--vs-python",
        "--python",
        fake.to_str().unwrap(),
        "--python-timeout",
        "1",
    ]);
    let _ = std::fs::remove_file(&fake);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("ran longer than 1s and was killed"), "{err}");
    // The command as it ran, to run by hand.
    for arg in ["--repeat 1", "--quick", "--only latency", "--latency 100"] {
        assert!(err.contains(arg), "lacks `{arg}`: {err}");
    }
}

#[test]
fn a_plot_onto_a_symlink_writes_through_it() {
    let dir = temp("plot-symlink");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("other")).unwrap();
    std::fs::write(dir.join("other/real.svg"), "old").unwrap();
    std::os::unix::fs::symlink("other/real.svg", dir.join("link.svg")).unwrap();
    let sweep = |plot: &std::path::Path| {
        corepool(&[
            "bench",
            "--quick",
            "--scale",
            "--only",
            "cpu_loop",
            "--size",
            "1000",
            "--repeat",
            "1",
            "--workers",
            "1",
            "--plot",
            plot.to_str().unwrap(),
        ])
    };
    let out = sweep(&dir.join("link.svg"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let link = std::fs::symlink_metadata(dir.join("link.svg")).unwrap();
    assert!(link.file_type().is_symlink(), "the link was replaced");
    let svg = std::fs::read_to_string(dir.join("other/real.svg")).unwrap();
    assert!(svg.contains("<svg"), "the link's target got the plot");
    // A link to a device is refused, never replaced.
    std::os::unix::fs::symlink("/dev/null", dir.join("null.svg")).unwrap();
    let out = sweep(&dir.join("null.svg"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not a regular file"),
        "{}",
        text(&out.stderr)
    );
    assert!(std::fs::symlink_metadata(dir.join("null.svg"))
        .unwrap()
        .file_type()
        .is_symlink());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_that_cannot_be_written_is_a_failure() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_corepool"))
        .arg("--help")
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot write the output"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn tables_count_in_good_grammar() {
    let out = ok(&[
        "bench",
        "--quick",
        "--only",
        "latency",
        "--repeat",
        "1",
        "--workers",
        "1",
    ]);
    assert!(out.contains("1 worker process,"), "{out}");
    assert!(out.contains("1 unpinned thread "), "{out}");
    assert!(out.contains("per-cpu: CPU "), "one CPU, not `CPUs`: {out}");
    assert!(
        !out.contains("1.00x faster"),
        "a baseline against itself: {out}"
    );
    assert!(out.contains("baseline"), "{out}");
    let soak = ok(&["soak", "--tasks", "10", "--retries", "0"]);
    assert!(soak.contains("on their only run"), "{soak}");
    let soak = ok(&["soak", "--tasks", "10", "--retries", "4294967295"]);
    assert!(soak.contains("on all 4294967296 runs"), "{soak}");
}

/// The processes of process group `pgid`, live or zombie, as (pid, state,
/// command line).
fn group_members(pgid: u32) -> Vec<(u32, char, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command may contain spaces: the fields follow the last ')'.
            let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
            let state = fields.next()?.chars().next()?;
            let group: u32 = fields.nth(1)?.parse().ok()?;
            (group == pgid).then(|| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|b| text(&b).replace('\0', " "))
                    .unwrap_or_default();
                (pid, state, cmdline)
            })
        })
        .collect()
}

/// Polls `cond` until it holds or `limit` passes (then `false`): a check
/// under a watchdog, not synchronisation.
fn within(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while !cond() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// SIGKILLs what is left of a process group if the test fails on the way.
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if !group_members(self.0).is_empty() {
            // SAFETY: kill has no memory preconditions; the group still has
            // members, so its id is still this group's.
            unsafe { libc::kill(-(self.0 as i32), libc::SIGKILL) };
        }
    }
}

/// Runs `corepool bench --vs-python --quick` (with `--python python` if
/// given) in a process group of its own, sends `signal` to the group
/// (Ctrl-C) or to corepool alone once the baseline runs with its workers,
/// and checks that corepool ends by that signal leaving no process of its
/// group behind.
fn signal_mid_baseline(python: Option<&str>, signal: i32, whole_group: bool) {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corepool"));
    cmd.args([
        "bench",
        "--vs-python",
        "--quick",
        "--only",
        "map,apply_async,latency",
    ]);
    if let Some(python) = python {
        cmd.args(["--python", python]);
    }
    let mut child = cmd
        .env_remove("COREPOOL_PYTHON")
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pgid = child.id();
    let guard = GroupGuard(pgid);
    // The baseline is running with its pool's workers: a process of the
    // group running the script, and a child of it.
    let baseline_has_workers = || {
        let members = group_members(pgid);
        members.iter().any(|(python, _, cmd)| {
            cmd.contains("bench_mp.py")
                && common::descendants_of(*python)
                    .iter()
                    .any(|w| members.iter().any(|(m, _, _)| m == w))
        })
    };
    assert!(
        within(LIMIT, baseline_has_workers),
        "signal {signal}: the Python baseline never started its workers: {:?}",
        group_members(pgid)
    );
    let target = if whole_group {
        -(pgid as i32)
    } else {
        pgid as i32
    };
    // SAFETY: kill has no memory preconditions; corepool is our unreaped
    // child, so its pid and its group's id are still its own.
    unsafe { libc::kill(target, signal) };
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(());
        status
    });
    if rx.recv_timeout(LIMIT).is_err() {
        drop(guard);
        panic!("signal {signal}: corepool did not end");
    }
    let status = waiter.join().unwrap().unwrap();
    assert_eq!(status.signal(), Some(signal), "{status:?}");
    // What corepool killed dies at once; the zombies of the baseline's
    // workers are reaped by init, which may take it a moment.
    let gone = within(Duration::from_secs(30), || group_members(pgid).is_empty());
    assert!(
        gone,
        "signal {signal}: left in corepool's process group: {:?}",
        group_members(pgid)
    );
    drop(guard);
}

#[test]
fn a_fatal_signal_leaves_no_python_baseline_behind() {
    if !has_python() {
        eprintln!("skipped: no python3, so no Python baseline to end");
        return;
    }
    // Ctrl-C reaches the whole process group: Python and its workers get it
    // too (Python may then hang in the KeyboardInterrupt, as
    // multiprocessing.Pool does). SIGTERM or SIGHUP to corepool alone
    // reaches only corepool, which must end the baseline itself.
    for (signal, whole_group) in [
        (libc::SIGINT, true),
        (libc::SIGTERM, false),
        (libc::SIGHUP, false),
    ] {
        signal_mid_baseline(None, signal, whole_group);
    }
}

#[test]
fn a_fatal_signal_ends_a_baseline_that_ignores_it() {
    use std::os::unix::fs::PermissionsExt;
    // A baseline that hangs whatever it is sent, as a Python stuck in a
    // KeyboardInterrupt does, with a "worker" of its own that ignores the
    // signals too: only corepool's cleanup can end them. (It answers the
    // interpreter check at once.)
    let fake = temp("stubborn-python.sh");
    std::fs::write(
        &fake,
        "#!/bin/sh\n[ \"$1\" = -c ] && exit 0\ntrap '' INT TERM HUP PIPE\nsleep 300 &\nwhile :; do wait; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (signal, whole_group) in [(libc::SIGINT, true), (libc::SIGTERM, false)] {
        signal_mid_baseline(Some(fake.to_str().unwrap()), signal, whole_group);
    }
    let _ = std::fs::remove_file(&fake);
}
