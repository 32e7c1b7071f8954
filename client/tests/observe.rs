//! Seeing the farm: the daemons' `/metrics` scraped while jobs run and
//! checked with promtool, the dashboard in a real headless Chromium, the
//! accounting across a gatekeeper restart, and the HTTP listeners' access
//! rule (open addresses, the token, mutual TLS).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use mexec_testkit::{announced, bin, skip, wait_until, GatedFarm};

/// GET `path` from `addr` over plain HTTP/1.1: the status code and body.
fn http_get(addr: SocketAddr, path: &str, headers: &[&str]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let code = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// The value of the sample `name` (with its labels, as written) in an
/// exposition; 0 when absent.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Runs `promtool check metrics` on `text`; `None` without promtool.
fn promtool(text: &str) -> Option<(bool, String)> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.success(), said))
}

fn metrics_of(farm: &GatedFarm) -> (SocketAddr, Vec<SocketAddr>) {
    let gk = announced(farm.gatekeeper.pid(), "dashboard").expect("dashboard address");
    let nodes = farm
        .executors
        .iter()
        .map(|e| announced(e.pid(), "metrics").expect("metrics address"))
        .collect();
    (gk, nodes)
}

fn run_ok(farm: &GatedFarm, args: &[&str]) -> i32 {
    let dir = std::env::temp_dir();
    farm.mexec(&dir, args)
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .code()
        .unwrap_or(-1)
}

#[test]
fn metrics_count_the_jobs_that_ran_and_pass_promtool() {
    let farm = GatedFarm::start_with(
        &[2, 2],
        &["--http-listen", "127.0.0.1:0"],
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let (gk, nodes) = metrics_of(&farm);
    // One job runs while we scrape.
    let dir = std::env::temp_dir();
    let mut sleeper = farm.mexec(&dir, &["--", "sleep", "3"]).spawn().unwrap();
    let running = |addr| sample(&http_get(addr, "/metrics", &[]).1, "mexec_jobs_running");
    assert!(
        wait_until(Duration::from_secs(10), || nodes
            .iter()
            .map(|&n| running(n))
            .sum::<f64>()
            == 1.0),
        "the running job is not in mexec_jobs_running"
    );
    let gk_text = http_get(gk, "/metrics", &[]).1;
    assert_eq!(
        sample(&gk_text, "mexec_cluster_jobs_running"),
        1.0,
        "{gk_text}"
    );
    for _ in 0..4 {
        assert_eq!(run_ok(&farm, &["--", "true"]), 0);
    }
    assert_eq!(run_ok(&farm, &["--", "sh", "-c", "exit 3"]), 3);
    assert_eq!(run_ok(&farm, &["--", "sh", "-c", "kill -9 $$"]), 137);
    assert_eq!(run_ok(&farm, &["--relay", "--", "echo", "relayed"]), 0);
    assert!(sleeper.wait().unwrap().success());
    // Each job's end reaches the gatekeeper on the membership stream.
    let slot_time = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("mexec_user_slot_seconds_total{"))
            .count()
    };
    let mut gk_text = String::new();
    wait_until(Duration::from_secs(10), || {
        gk_text = http_get(gk, "/metrics", &[]).1;
        sample(&gk_text, "mexec_leases_total{result=\"granted\"}") == 8.0
            && slot_time(&gk_text) == 1
    });
    let texts: Vec<String> = nodes
        .iter()
        .map(|&n| http_get(n, "/metrics", &[]).1)
        .collect();
    let total = |name: &str| texts.iter().map(|t| sample(t, name)).sum::<f64>();
    let outcomes = [
        ("exit_zero", 6.0),
        ("exit_nonzero", 1.0),
        ("signal", 1.0),
        ("limit", 0.0),
        ("refused", 0.0),
        ("lost", 0.0),
    ];
    for (outcome, count) in outcomes {
        let name = format!("mexec_jobs_total{{outcome=\"{outcome}\"}}");
        assert_eq!(total(&name), count, "{name}:\n{}", texts.join("\n"));
    }
    assert_eq!(total("mexec_job_duration_seconds_count"), 8.0);
    assert!(
        total("mexec_job_duration_seconds_sum") >= 3.0,
        "the sleep took 3 s"
    );
    // "relayed\n"
    assert_eq!(total("mexec_output_bytes_total"), 8.0);
    assert_eq!(total("mexec_slots"), 4.0);
    assert_eq!(
        sample(&gk_text, "mexec_nodes{state=\"up\"}"),
        2.0,
        "{gk_text}"
    );
    assert_eq!(sample(&gk_text, "mexec_cluster_slots"), 4.0);
    assert_eq!(sample(&gk_text, "mexec_relayed_jobs_total"), 1.0);
    assert_eq!(sample(&gk_text, "mexec_lease_wait_seconds_count"), 8.0);
    eprintln!("gatekeeper:\n{gk_text}");
    for text in texts.iter().chain([&gk_text]) {
        match promtool(text) {
            Some((ok, said)) => assert!(ok, "promtool check metrics: {said}\n{text}"),
            None => return skip("promtool (Debian prometheus) is not installed"),
        }
    }
    eprintln!("promtool check metrics: the executors' and the gatekeeper's expositions pass");
}

#[test]
fn the_dashboard_shows_a_job_run_and_finish_live_in_chromium() {
    if Command::new("chromedriver")
        .arg("--version")
        .output()
        .is_err()
    {
        return skip("chromedriver (Debian chromium-driver) is not installed");
    }
    let farm = GatedFarm::start_with(&[4, 4, 2], &["--http-listen", "127.0.0.1:0"], &[]);
    let gk = announced(farm.gatekeeper.pid(), "dashboard").expect("dashboard address");
    // Some history first, so the tables and the chart have content.
    for args in [
        &["--", "true"][..],
        &["--", "sh", "-c", "exit 2"],
        &["--", "cc", "--version"],
    ] {
        run_ok(&farm, args);
    }
    // The README's picture is renewed only when asked for
    // (MEXEC_UPDATE_SCREENSHOT=1), so that a test run leaves the tree as it
    // found it.
    let shots = tempfile::tempdir().unwrap();
    let screenshot = match std::env::var("MEXEC_UPDATE_SCREENSHOT").as_deref() {
        Ok("1") => mexec_testkit::workspace_root().join("docs/dashboard.png"),
        _ => shots.path().join("dashboard.png"),
    };
    let script = mexec_testkit::workspace_root().join("client/tests/support/dashboard_browser.py");
    let mut job = farm.mexec(&std::env::temp_dir(), &[]);
    job.args(["--", "sleep", "3.0107"]);
    let mexec = bin("mexec");
    let out = Command::new("python3")
        .arg(&script)
        .arg(format!("http://{gk}/"))
        .arg("3")
        .arg(&screenshot)
        .arg("--")
        .arg(&mexec)
        .args(["--", "sleep", "3.0107"])
        .env("MEXEC_GATEKEEPER", farm.gatekeeper.address())
        .env("MEXEC_STATE_DIR", farm.state_dir.path())
        .env_remove("MEXEC_NODES")
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("{said}");
    assert!(out.status.success(), "{said}");
    for step in [
        "shows 3 nodes",
        "job shown as running",
        "job shown as finished",
        "never reloaded",
    ] {
        assert!(said.contains(step), "{step}: {said}");
    }
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
}

fn usage_hour_jobs(farm: &GatedFarm) -> u64 {
    let out = farm
        .mexec(&std::env::temp_dir(), &["--usage", "--json"])
        .output()
        .unwrap();
    let usage: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    usage["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|r| r["window"] == "hour" && r["build_id"] == "")
                .map(|r| r["jobs"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn accounting_survives_a_gatekeeper_restart_and_usage_agrees() {
    let db_dir = tempfile::tempdir().unwrap();
    let db = db_dir.path().join("accounting.db");
    let db_flag = db.to_str().unwrap();
    let mut farm = GatedFarm::start(&[2], &["--accounting-db", db_flag]);
    for _ in 0..3 {
        assert_eq!(run_ok(&farm, &["--", "true"]), 0);
    }
    assert!(
        wait_until(Duration::from_secs(10), || usage_hour_jobs(&farm) == 3),
        "mexec --usage does not show the 3 jobs: {}",
        usage_hour_jobs(&farm)
    );
    farm.gatekeeper.restart();
    assert!(
        wait_until(Duration::from_secs(10), || farm.members().len() == 1),
        "the node did not rejoin"
    );
    assert_eq!(
        usage_hour_jobs(&farm),
        3,
        "the jobs before the restart are kept"
    );
    assert_eq!(run_ok(&farm, &["--", "sh", "-c", "exit 1"]), 1);
    assert!(
        wait_until(Duration::from_secs(10), || usage_hour_jobs(&farm) == 4),
        "the job after the restart is added"
    );
    let table = farm
        .mexec(&std::env::temp_dir(), &["--usage"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    eprintln!("{table}");
    assert!(
        table.contains("LAST HOUR") && table.contains("LAST WEEK"),
        "{table}"
    );
}

/// Starts `program` with `args` and returns its exit code and stderr when
/// it exits within 5 s, `None` when it is still running (then killed).
fn start_briefly(program: &str, args: &[&str]) -> Option<(i32, String)> {
    let mut child = Command::new(bin(program))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until(Duration::from_secs(5), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    let out = child.wait_with_output().unwrap();
    Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn listeners_refuse_an_open_address_without_tls_or_token() {
    let runs = |program, args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        start_briefly(program, &args)
    };
    let cases = [
        ("mexec-gatekeeper", "--http-listen"),
        ("mexec-gatekeeper", "--metrics-listen"),
        ("mexecd", "--metrics-listen"),
    ];
    for (program, flag) in cases {
        let mut args: Vec<String> = vec!["--listen".into(), "127.0.0.1:0".into()];
        if program == "mexecd" {
            args.extend(["--slots".into(), "1".into()]);
            args.extend(mexec_testkit::job_user_args());
        }
        args.extend([flag.into(), "0.0.0.0:0".into()]);
        let (code, said) = runs(program, &args).expect("refused at start");
        assert_eq!(code, 2, "{program} {flag}: {said}");
        assert!(
            said.contains("refusing to serve HTTP on 0.0.0.0:0 without authentication"),
            "{said}"
        );
        args.push("--http-insecure".into());
        assert!(
            runs(program, &args).is_none(),
            "{program} {flag} --http-insecure should run"
        );
    }
    // With the token, an open address is fine, and requests need it.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let gatekeeper = mexec_testkit::Gatekeeper::start(&[
        "--token-file",
        token.to_str().unwrap(),
        "--http-listen",
        "0.0.0.0:0",
    ]);
    let http = announced(gatekeeper.pid(), "dashboard").expect("dashboard address");
    let http: SocketAddr = ([127, 0, 0, 1], http.port()).into();
    assert_eq!(http_get(http, "/metrics", &[]).0, 401);
    assert_eq!(http_get(http, "/", &["Authorization: Bearer wrong"]).0, 401);
    let (code, body) = http_get(http, "/metrics", &["Authorization: Bearer s3cret-token"]);
    assert_eq!(code, 200);
    assert!(body.contains("# HELP mexec_nodes"), "{body}");
    assert_eq!(http_get(http, "/?token=s3cret-token", &[]).0, 200);
    // Nothing here changes the farm: there is no route but GETs.
    let (code, _) = {
        let mut stream = TcpStream::connect(http).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(stream, "POST /metrics?token=s3cret-token HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        (
            response
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(0),
            (),
        )
    };
    assert_eq!(code, 405);
}

/// A TLS GET with Python's ssl module, with or without a client
/// certificate: the status line, or the error.
fn tls_get(addr: SocketAddr, ca: &Path, cert: Option<(&Path, &Path)>) -> String {
    let load = cert
        .map(|(c, k)| {
            format!(
                "ctx.load_cert_chain({:?}, {:?})",
                c.to_str().unwrap(),
                k.to_str().unwrap()
            )
        })
        .unwrap_or_default();
    let script = format!(
        "import socket, ssl\n\
         ctx = ssl.create_default_context(cafile={ca:?})\n\
         ctx.check_hostname = False\n\
         {load}\n\
         try:\n\
         \x20   s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port})))\n\
         \x20   s.sendall(b'GET /metrics HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n\
         \x20   print(s.recv(100).split(b'\\r\\n')[0].decode())\n\
         except Exception as e:\n\
         \x20   print('refused:', e)\n",
        ca = ca.to_str().unwrap(),
        port = addr.port()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn under_mutual_tls_a_request_without_a_certificate_is_refused() {
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path().to_str().unwrap();
    for args in [
        &["ca", "--dir", dir][..],
        &["node", "gk", "--dir", dir],
        &["user", "alice", "--dir", dir],
    ] {
        assert!(Command::new(bin("mexec-cert"))
            .args(args)
            .output()
            .unwrap()
            .status
            .success());
    }
    let p = |name: &str| pki.path().join(name);
    let gatekeeper = mexec_testkit::Gatekeeper::start(&[
        "--tls-ca",
        p("ca.pem").to_str().unwrap(),
        "--tls-cert",
        p("gk.pem").to_str().unwrap(),
        "--tls-key",
        p("gk-key.pem").to_str().unwrap(),
        "--http-listen",
        "127.0.0.1:0",
    ]);
    let http = announced(gatekeeper.pid(), "dashboard").expect("https dashboard");
    let without = tls_get(http, &p("ca.pem"), None);
    assert!(without.starts_with("refused"), "{without}");
    let with = tls_get(
        http,
        &p("ca.pem"),
        Some((&p("alice.pem"), &p("alice-key.pem"))),
    );
    assert_eq!(with, "HTTP/1.1 200 OK", "a user certificate is let in");
    eprintln!("without a certificate: {without}; with alice's: {with}");
    // The refused handshake is on the gatekeeper's record.
    let logged = || {
        gatekeeper.log_text().lines().any(|l| {
            l.contains("kind=\"tls-handshake\"") && l.contains("the client sent no certificate")
        })
    };
    assert!(
        mexec_testkit::wait_until(Duration::from_secs(5), logged),
        "{}",
        gatekeeper.log_text()
    );
}

#[test]
fn status_watch_redraws_the_table_every_second() {
    let farm = GatedFarm::start(&[1, 1], &[]);
    let mut watch = farm
        .mexec(&std::env::temp_dir(), &["--status", "--watch"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let frames = text.matches("\x1b[H\x1b[2J").count();
    assert!(
        (2..=4).contains(&frames),
        "{frames} frames in 2.5 s: {text:?}"
    );
    let last = text.rsplit("\x1b[H\x1b[2J").next().unwrap();
    assert!(last.contains("n1") && last.contains("n2"), "{last}");
    // --watch means nothing without --status.
    let alone = farm
        .mexec(&std::env::temp_dir(), &["--watch"])
        .output()
        .unwrap();
    assert!(!alone.status.success());
    let said = String::from_utf8_lossy(&alone.stderr);
    assert!(said.contains("--status"), "{said}");
}

#[test]
fn an_accounting_database_that_cannot_be_used_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let not_sqlite = dir.path().join("notes.txt");
    std::fs::write(&not_sqlite, "these are not the rows you are looking for\n").unwrap();
    let (code, said) = start_briefly(
        "mexec-gatekeeper",
        &[
            "--listen",
            "127.0.0.1:0",
            "--accounting-db",
            not_sqlite.to_str().unwrap(),
        ],
    )
    .expect("refused at start");
    assert_eq!(code, 2, "{said}");
    assert!(
        said.contains("accounting database") && said.contains("not a database"),
        "{said}"
    );
    // The file is left as it was.
    assert!(std::fs::read_to_string(&not_sqlite)
        .unwrap()
        .starts_with("these are not"));
}
