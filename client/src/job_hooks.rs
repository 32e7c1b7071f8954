//! What differs when the agent, not a `mexec` process of its own, runs a
//! job: the job's output goes to the descriptors its `mexec` passed, our
//! messages to its stderr, signals come from its socket, a local run
//! happens back in the `mexec` process, and placement reservations carry
//! the job's own key. The job's code asks here and, outside the agent (no
//! hooks set), behaves as a plain client.
//!
//! The hooks are a task-local value set around the job's future, so many
//! jobs run in one agent, each with its own.

use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::io::AsyncWrite;

/// A stream the job's output goes to.
pub type Sink = Box<dyn AsyncWrite + Send + Unpin>;

/// Asks the job's `mexec` process to run the job itself, and gives back
/// its exit code.
pub trait LocalRunner: Send + Sync {
    fn run_locally(&self) -> std::pin::Pin<Box<dyn Future<Output = i32> + Send + '_>>;
}

/// One job's hooks in the agent.
pub struct Hooks {
    /// The job's stdout and stderr, taken once by its `Output`.
    pub sinks: Mutex<Option<(Sink, Sink)>>,
    /// Where our messages about the job go (its `mexec`'s stderr).
    pub messages: Mutex<std::fs::File>,
    /// Signals from the job's `mexec`, taken once by its signal stream.
    pub signals: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<i32>>>,
    /// The job's stdin as its `mexec` relays it, and how to ask for it.
    pub stdin: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>>>,
    pub want_stdin: tokio::sync::mpsc::UnboundedSender<()>,
    /// The job's own key for placement reservations.
    pub holder: u32,
    pub local: Box<dyn LocalRunner>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

tokio::task_local! {
    static HOOKS: Arc<Hooks>;
}

/// Runs `job` with `hooks` in force.
pub async fn scope<F: Future>(hooks: Arc<Hooks>, job: F) -> F::Output {
    HOOKS.scope(hooks, job).await
}

fn with<R>(f: impl FnOnce(&Hooks) -> R) -> Option<R> {
    HOOKS.try_with(|hooks| f(hooks)).ok()
}

/// Writes one `mexec: ...` line where the job's messages go.
pub fn say(message: std::fmt::Arguments<'_>) {
    let written = with(|hooks| {
        if let Ok(mut stderr) = hooks.messages.lock() {
            let _ = writeln!(stderr, "mexec: {message}");
        }
    });
    if written.is_none() {
        eprintln!("mexec: {message}");
    }
}

/// The job's stdout and stderr, when the agent runs it.
pub fn output_sinks() -> Option<(Sink, Sink)> {
    with(|hooks| hooks.sinks.lock().ok()?.take()).flatten()
}

/// The job's signals, when the agent runs it.
pub fn relayed_signals() -> Option<tokio::sync::mpsc::UnboundedReceiver<i32>> {
    with(|hooks| hooks.signals.lock().ok()?.take()).flatten()
}

/// Where a job's stdin comes from.
#[derive(Debug)]
pub enum StdinSource {
    /// Ours.
    Own(tokio::io::Stdin),
    /// The job's `mexec`'s, relayed by it in chunks no bigger than the
    /// reader's buffer.
    Relayed(Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>>>),
}

impl StdinSource {
    /// Ours, or in the agent the job's `mexec`'s (which starts reading it
    /// now).
    pub fn for_job() -> StdinSource {
        let relayed = with(|hooks| {
            let _ = hooks.want_stdin.send(());
            hooks.stdin.clone()
        });
        match relayed {
            Some(relayed) => StdinSource::Relayed(relayed),
            None => StdinSource::Own(tokio::io::stdin()),
        }
    }

    /// The next chunk, at most `max` bytes read from our stdin or as the
    /// job's `mexec` relayed it; `None` at the end. Read into fresh,
    /// unzeroed memory that the chunk then owns: no copy, and no zeroed
    /// buffer per job for the many jobs that never read their stdin.
    pub async fn next_chunk(&mut self, max: usize) -> std::io::Result<Option<bytes::Bytes>> {
        match self {
            StdinSource::Own(stdin) => {
                let mut buf = bytes::BytesMut::with_capacity(max);
                match tokio::io::AsyncReadExt::read_buf(stdin, &mut buf).await? {
                    0 => Ok(None),
                    _ => Ok(Some(buf.freeze())),
                }
            }
            StdinSource::Relayed(chunks) => Ok(chunks.lock().await.recv().await),
        }
    }
}

/// The key the job's placement reservations carry: the agent's own per
/// job, else this process's id.
pub fn holder() -> u32 {
    with(|hooks| hooks.holder).unwrap_or_else(std::process::id)
}

/// Runs the job in its `mexec` process, when the agent runs it; `None`
/// means run it here.
pub async fn run_locally_elsewhere() -> Option<i32> {
    let hooks = HOOKS.try_with(Arc::clone).ok()?;
    Some(hooks.local.run_locally().await)
}

/// How this process runs jobs, for the job log: "agent" inside the agent,
/// else why the job runs directly.
static DIRECT_REASON: OnceLock<String> = OnceLock::new();

/// Records why this `mexec` runs its job without the agent.
pub fn set_direct_reason(reason: String) {
    let _ = DIRECT_REASON.set(reason);
}

/// "agent" for a job the agent runs, else why it did not.
pub fn route_note() -> String {
    if with(|_| ()).is_some() {
        return "agent".to_owned();
    }
    DIRECT_REASON
        .get()
        .cloned()
        .unwrap_or_else(|| "direct".to_owned())
}
