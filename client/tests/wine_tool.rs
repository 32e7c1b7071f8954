//! The mapping agency's pattern: a Windows command-line tool run on Linux
//! executors through Wine (`mexec -- wine tool.exe ...`). The tool is a
//! small console program built here with MinGW; it reads an input file,
//! writes an output file in the job's directory on the shared file system,
//! reads stdin, and ends with its own exit code. Skipped, with a message,
//! where Wine or MinGW is missing.

use std::io::Write;
use std::process::{Command, Stdio};

use mexec_testkit::wine::{self, build_windows_program};
use mexec_testkit::{job_dir, Farm};

const TOOL: &str = r#"
#include <ctype.h>
#include <stdio.h>
#include <windows.h>

int main(int argc, char **argv) {
    char cwd[MAX_PATH] = "";
    char line[256] = "";
    FILE *in, *out;
    long n = 0;
    int c;
    if (argc != 3) {
        fprintf(stderr, "usage: tile IN OUT\n");
        return 2;
    }
    in = fopen(argv[1], "rb");
    out = fopen(argv[2], "wb");
    if (!in || !out) {
        fprintf(stderr, "tile: cannot open %s or %s\n", argv[1], argv[2]);
        return 3;
    }
    while ((c = fgetc(in)) != EOF) {
        fputc(toupper(c), out);
        n++;
    }
    fclose(out);
    GetCurrentDirectoryA(sizeof cwd, cwd);
    fgets(line, sizeof line, stdin);
    printf("tiled %ld bytes in %s; stdin said %s", n, cwd, line);
    fprintf(stderr, "tile: done\n");
    return 7;
}
"#;

#[test]
fn a_windows_tool_runs_on_a_linux_executor_through_wine() {
    if !wine::available() {
        return;
    }
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    build_windows_program(TOOL, &work.join("tile.exe"));
    std::fs::write(work.join("tile-in.txt"), "aerial photo 17\n").unwrap();
    // The job's own prefix, which Wine creates on its first start as the
    // account jobs run as (it refuses a prefix someone else owns).
    let prefix = dir.path().join("wineprefix");
    mexec_testkit::give_to_job_user(dir.path());
    let mexec = |args: &[&str]| {
        let mut command = farm.mexec(&work, &["--no-local", "--timeout", "600"]);
        command
            .args(args)
            .envs(wine::environment(&prefix))
            .env("HOME", dir.path());
        command
    };

    // The first start of a prefix takes seconds and talks on stderr; do it
    // as a job of its own, and let the wineserver save the prefix.
    let boot = mexec(&[
        "-n",
        "--",
        "sh",
        "-c",
        "wine wineboot --init; wineserver -w",
    ])
    .output()
    .unwrap();
    assert!(boot.status.success(), "{boot:?}");
    // Every process a job starts ends with the job (its cgroup), a
    // wineserver too: jobs that share a prefix share a wineserver that the
    // node keeps outside any job, as the README says a site should.
    let server = persistent_wineserver(&prefix, dir.path());

    let mut child = mexec(&["--", "wine", "tile.exe", "tile-in.txt", "tile-out.txt"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello from the client\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The C runtime's text mode writes Windows line ends; they arrive as
    // the tool wrote them.
    let windows_cwd = format!("Z:{}", work.display()).replace('/', "\\");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("tiled 16 bytes in {windows_cwd}; stdin said hello from the client\r\n")
    );
    assert_eq!(String::from_utf8_lossy(&output.stderr), "tile: done\r\n");
    assert_eq!(
        std::fs::read_to_string(work.join("tile-out.txt")).unwrap(),
        "AERIAL PHOTO 17\n"
    );

    // A batch, several at once on the node: jobs that end (and have their
    // process groups killed) must not take the others' Wine down.
    let items: Vec<String> = (0..6).map(|i| format!("item-{i}")).collect();
    for item in &items {
        std::fs::write(work.join(format!("{item}.txt")), format!("{item}\n")).unwrap();
    }
    mexec_testkit::give_to_job_user(&work);
    let jobs = items
        .iter()
        .map(|item| {
            let (input, out) = (format!("{item}.txt"), format!("{item}.out"));
            mexec(&["-n", "--", "wine", "tile.exe", &input, &out])
        })
        .collect();
    for (item, output) in items.iter().zip(mexec_testkit::run_pool(jobs, 4)) {
        assert_eq!(output.status.code(), Some(7), "{item}: {output:?}");
        assert_eq!(
            std::fs::read_to_string(work.join(format!("{item}.out"))).unwrap(),
            format!("{}\n", item.to_uppercase())
        );
    }
    drop(server);
}

/// A wineserver for `prefix`, started as the job account outside any job,
/// that stays up (`-p`) until dropped.
fn persistent_wineserver(prefix: &std::path::Path, home: &std::path::Path) -> Wineserver {
    let mut command = Command::new("wineserver");
    if mexec_testkit::is_root() {
        command = Command::new("runuser");
        command.args(["-u", mexec_testkit::JOB_USER, "--", "wineserver"]);
    }
    let status = command
        .arg("-p")
        .envs(wine::environment(prefix))
        .env("HOME", home)
        .status()
        .unwrap();
    assert!(status.success(), "wineserver -p: {status}");
    Wineserver(command)
}

/// Stops its wineserver (`-k`) when dropped.
struct Wineserver(Command);

impl Drop for Wineserver {
    fn drop(&mut self) {
        let mut stop = Command::new(self.0.get_program());
        stop.args(self.0.get_args().filter(|a| *a != "-p"))
            .arg("-k")
            .envs(self.0.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))));
        let _ = stop.status();
    }
}
