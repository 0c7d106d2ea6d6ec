//! `fleetkeyctl user add-batch FILE`: enrolls many users, one JSON line
//! each, one after the other through the daemon's own `AddUser`.
//!
//! It is idempotent, so a run cut short (Ctrl-C, kill -9, a daemon
//! restart) is finished by running it again. For each line the daemon is
//! first asked whom the code enrolls (`CheckAddUser`); a user already
//! enrolled here is reported `done`. A code already used is `done` when
//! the user the line names is enrolled here, else it failed. When the
//! answer is not clear yet (a user whose enrollment the daemon is still
//! finishing for a caller that went away), the line is handed to
//! `AddUser`, which waits for the enrollment in progress and then answers
//! for the finished state. The daemon finishes an enrollment whose caller
//! hung up, so no user is left half-made.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use fleetkey_proto::daemon::{
    AddUserRequest, CheckAddUserRequest, GetStatusRequest, GetUserRequest,
};
use fleetkey_proto::terminal::escape;
use fleetkey_proto::{Failure, Reason};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::Context;
use super::user_add_batch_input::{self as input, BatchLine, PinFile, Pins};
use crate::connection::Client;
use crate::output;
use crate::pin::PinInput;

/// Enroll many users from a file of JSON lines (resumable, idempotent)
#[derive(Debug, clap::Args)]
#[command(
    long_about = "\
Enrolls the users of FILE, one JSON line each: {\"code\": CODE_OR_URI, \
\"backend\"?: NAME, \"reader\"?: NAME, \"slot\"?: SLOT}. Other fields are \
ignored, so the lines `fleetkey-portal code issue --batch` prints are read \
as they are; their \"user\" field (or the URI's u=) names the line's user \
for the PIN file and for a code already used. Lines are enrolled one after \
the other, as `user add` would. Admins only.

Idempotent and resumable: a user already enrolled on this device is \
reported done and not enrolled again, so after Ctrl-C, kill -9 or a daemon \
restart the same command finishes the batch. A line whose code was already \
used is done when its user is enrolled here, and failed otherwise.

PINs never come from the command line: --pins FILE gives each user's PIN \
(lines NAME<TAB>PIN or {\"user\": NAME, \"pin\": PIN}; the file must be \
yours and of mode 0600 or stricter), --pin-stdin one PIN for every user \
(the first line of standard input).

--dry-run checks every line locally and changes nothing: the JSON, the \
code's check character, the PIN (present, and of the length `status` \
reports), duplicate lines and users.

Output: on a terminal, a progress bar on stderr (users handled, rate, time \
left, and the counts so far); one line per user on \
stdout (with --json one JSON object per line: {\"line\", \"user\", \
\"status\": enrolled|done|failed|skipped (checked with --dry-run), \
\"reason\"?, \"message\"?}, then {\"summary\": {...}}); a summary with \
counts. Exit status: 0 when no line failed, 120 (BATCH_PARTIAL) when some \
failed, 121 (BATCH_FAILED) when none was enrolled or done, 122 \
(BATCH_INVALID) when a dry run found a bad line. Files over 16 MiB and \
lines over 64 KiB are refused before anything is done.",
    after_long_help = "\
Examples:
  fleetkey-portal code issue --db portal.db --batch users.csv > codes.jsonl
  fleetkeyctl user add-batch --dry-run --pins pins.tsv codes.jsonl
  fleetkeyctl --json user add-batch --pins pins.tsv codes.jsonl > result.jsonl"
)]
pub struct UserAddBatch {
    /// The batch: JSON lines {\"code\": CODE_OR_URI, \"backend\"?, \"reader\"?, \"slot\"?}
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Each user's PIN: lines NAME<TAB>PIN or {\"user\", \"pin\"}; mode 0600, yours
    #[arg(long, value_name = "FILE", required_unless_present_any = ["pin_stdin", "dry_run"])]
    pub pins: Option<PathBuf>,

    /// Read one PIN for every user from the first line of standard input
    #[arg(long, conflicts_with = "pins")]
    pub pin_stdin: bool,

    /// Check every line locally; change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Key store for lines that name none (default: the daemon's default backend)
    #[arg(long, value_name = "NAME")]
    pub backend: Option<String>,

    /// The PINs are the admin's: each user must change theirs (user pin change) before their first signature or approval
    #[arg(long)]
    pub require_pin_change: bool,
}

/// What became of one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Enrolled,
    Done,
    Failed,
    Skipped,
    /// `--dry-run`: the line passed every local check.
    Checked,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Enrolled => "enrolled",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
            Status::Checked => "checked",
        }
    }
}

/// One line's report (`--json`: one JSON line).
#[derive(Debug, Clone, Serialize)]
pub struct LineReport {
    pub line: usize,
    pub user: Option<String>,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl LineReport {
    fn new(line: usize, user: Option<String>, status: Status) -> Self {
        Self {
            line,
            user,
            status,
            reason: None,
            message: None,
        }
    }

    fn failed(line: usize, user: Option<String>, failure: &Failure) -> Self {
        Self {
            reason: Some(failure.reason.as_str().to_string()),
            message: Some(failure.message.clone()),
            ..Self::new(line, user, Status::Failed)
        }
    }

    fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

/// The counts at the end.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub total: usize,
    pub enrolled: usize,
    pub done: usize,
    pub failed: usize,
    pub skipped: usize,
    pub checked: usize,
}

impl Summary {
    fn count(&mut self, status: Status) {
        self.total += 1;
        match status {
            Status::Enrolled => self.enrolled += 1,
            Status::Done => self.done += 1,
            Status::Failed => self.failed += 1,
            Status::Skipped => self.skipped += 1,
            Status::Checked => self.checked += 1,
        }
    }

    /// The failure the exit status tells, if any.
    pub fn outcome(&self, dry_run: bool) -> Option<Failure> {
        if self.failed == 0 {
            return None;
        }
        Some(if dry_run {
            Failure::new(
                Reason::BatchInvalid,
                format!("{} of {} lines would fail", self.failed, self.total),
            )
        } else if self.enrolled + self.done == 0 {
            Failure::new(
                Reason::BatchFailed,
                format!("no line of {} was enrolled", self.total),
            )
        } else {
            Failure::new(
                Reason::BatchPartial,
                format!("{} of {} lines failed", self.failed, self.total),
            )
        })
    }

    pub fn text(&self, dry_run: bool) -> String {
        if dry_run {
            return format!(
                "Dry run: {} lines: {} would be enrolled or done, {} would fail. Nothing was changed.",
                self.total, self.checked, self.failed
            );
        }
        format!(
            "Batch: {} lines: {} enrolled, {} done (already enrolled), {} failed, {} skipped.",
            self.total, self.enrolled, self.done, self.failed, self.skipped
        )
    }
}

#[derive(Serialize)]
struct SummaryJson<'a> {
    summary: &'a Summary,
}

/// Prints reports as they come, and a progress bar on a terminal.
struct Reporter {
    json: bool,
    /// Drawn on stderr when it is a terminal, hidden otherwise.
    bar: ProgressBar,
    summary: Summary,
}

impl Reporter {
    fn new(json: bool, total: usize) -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total as u64), target);
        // The template is fixed text: it cannot fail to parse, but a
        // plain bar is drawn if it ever did.
        if let Ok(style) =
            ProgressStyle::with_template("[{bar:30}] {pos}/{len} {per_sec:.0} eta {eta}  {msg}")
        {
            bar.set_style(style.progress_chars("#>-"));
        }
        let reporter = Reporter {
            json,
            bar,
            summary: Summary::default(),
        };
        reporter.set_message();
        reporter
    }

    fn report(&mut self, report: &LineReport) -> Result<(), Failure> {
        self.summary.count(report.status);
        let text = if self.json {
            serde_json::to_string(report).map_err(|e| {
                Failure::new(
                    Reason::Internal,
                    format!("cannot encode the JSON output: {e}"),
                )
            })?
        } else {
            report_text(report)
        };
        // The bar is taken off the terminal while the line is printed.
        self.bar.suspend(|| output::data(&text))?;
        self.bar.inc(1);
        self.set_message();
        Ok(())
    }

    fn set_message(&self) {
        let s = &self.summary;
        self.bar.set_message(format!(
            "enrolled {}  done {}  failed {}",
            s.enrolled, s.done, s.failed
        ));
    }

    /// Removes the bar from the terminal.
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// `LINE  USER  STATUS  [REASON: message]`, escaped for the terminal.
pub fn report_text(report: &LineReport) -> String {
    let mut text = format!(
        "line {}: {}: {}",
        report.line,
        escape(report.user.as_deref().unwrap_or("?")),
        report.status.as_str()
    );
    match (&report.reason, &report.message) {
        (Some(reason), Some(message)) => {
            text.push_str(&format!(" ({reason}): {}", escape(message)))
        }
        (None, Some(message)) => text.push_str(&format!(": {}", escape(message))),
        _ => {}
    }
    text
}

impl UserAddBatch {
    /// Runs the batch and returns the exit status (lib.rs calls it: the
    /// batch prints its own reports and summary).
    pub fn run_to_exit(&self, socket: &Path, json: bool) -> u8 {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                let failure = Failure::new(
                    Reason::Internal,
                    format!("cannot start the I/O runtime: {e}"),
                );
                output::print_failure(&failure, json);
                return failure.reason.exit_code();
            }
        };
        let ctx = Context {
            socket: socket.to_path_buf(),
            json,
        };
        let result = runtime.block_on(self.run(&ctx));
        match result {
            Ok(summary) => match summary.outcome(self.dry_run) {
                None => 0,
                Some(failure) => {
                    if !json {
                        output::message(&output::failure_text(&failure));
                    }
                    failure.reason.exit_code()
                }
            },
            Err(failure) => {
                output::print_failure(&failure, json);
                failure.reason.exit_code()
            }
        }
    }

    /// Reads and checks the input, then enrolls (or, with --dry-run,
    /// checks) every line. An `Err` is a failure before any line ran.
    async fn run(&self, ctx: &Context) -> Result<Summary, Failure> {
        let lines = input::read_batch(&self.file)?;
        let pins = if let Some(path) = &self.pins {
            Pins::File(PinFile::open(path)?)
        } else if self.pin_stdin {
            let mut stdin = PinInput::from_flag(true)?;
            Pins::One(stdin.existing("", "PIN")?)
        } else {
            Pins::None
        };
        let mut reporter = Reporter::new(ctx.json, lines.len());
        if self.dry_run {
            self.dry_run(ctx, &lines, &pins, &mut reporter).await?;
        } else {
            self.enroll_all(ctx, &lines, &pins, &mut reporter).await?;
        }
        reporter.finish();
        let summary = reporter.summary;
        if ctx.json {
            output::data(
                &serde_json::to_string(&SummaryJson { summary: &summary }).map_err(|e| {
                    Failure::new(
                        Reason::Internal,
                        format!("cannot encode the JSON output: {e}"),
                    )
                })?,
            )?;
        } else {
            output::message(&summary.text(self.dry_run));
        }
        Ok(summary)
    }

    fn backend_of(&self, line: &BatchLine) -> String {
        if line.backend.is_empty() {
            self.backend.clone().unwrap_or_default()
        } else {
            line.backend.clone()
        }
    }

    async fn dry_run(
        &self,
        ctx: &Context,
        lines: &input::Lines,
        pins: &Pins,
        reporter: &mut Reporter,
    ) -> Result<(), Failure> {
        // A read only; without a daemon the PIN lengths are not checked.
        let status = match ctx.client().await {
            Ok(mut client) => match client.get_status(GetStatusRequest {}).await {
                Ok(status) => Some(status.into_inner()),
                Err(status) => {
                    output::warn(&format!(
                        "cannot read the PIN policy from fleetkeyd: {}; PIN lengths are not checked",
                        ctx.rpc_failure(status).message
                    ));
                    None
                }
            },
            Err(failure) => {
                output::warn(&format!("{}; PIN lengths are not checked", failure.message));
                None
            }
        };
        let mut codes: HashMap<String, usize> = HashMap::new();
        let mut users: HashMap<String, usize> = HashMap::new();
        for (number, text) in lines {
            let report = match input::parse_line(text) {
                Err(failure) => LineReport::failed(*number, None, &failure),
                Ok(line) => {
                    let user = line.hint.clone();
                    match self.check_line(
                        &line,
                        *number,
                        pins,
                        status.as_ref(),
                        &mut codes,
                        &mut users,
                    ) {
                        Ok(note) => {
                            let report = LineReport::new(*number, user, Status::Checked);
                            match note {
                                Some(note) => report.with_message(note),
                                None => report,
                            }
                        }
                        Err(failure) => LineReport::failed(*number, user, &failure),
                    }
                }
            };
            reporter.report(&report)?;
        }
        Ok(())
    }

    /// The local checks of one parsed line; `Ok(Some(note))` when a check
    /// could not be made.
    fn check_line(
        &self,
        line: &BatchLine,
        number: usize,
        pins: &Pins,
        status: Option<&fleetkey_proto::daemon::Status>,
        codes: &mut HashMap<String, usize>,
        users: &mut HashMap<String, usize>,
    ) -> Result<Option<String>, Failure> {
        if let Some(first) = codes.insert(line.compact.clone(), number) {
            codes.insert(line.compact.clone(), first);
            return Err(Failure::new(
                Reason::InvalidArgument,
                format!("duplicate line: the same code as line {first}"),
            ));
        }
        let Some(user) = &line.hint else {
            return Ok(matches!(pins, Pins::File(_)).then(|| {
                "the line does not name its user: only the portal knows it, so its PIN is checked at enrollment"
                    .to_string()
            }));
        };
        if let Some(first) = users.insert(user.clone(), number) {
            users.insert(user.clone(), first);
            return Err(Failure::new(
                Reason::InvalidArgument,
                format!("duplicate user: {user} is already on line {first}"),
            ));
        }
        let pin = match pins {
            Pins::None => return Ok(Some("no PINs given: PINs not checked".into())),
            other => other.get(user).ok_or_else(|| no_pin(user))?,
        };
        if let Some(status) = status {
            let limits = super::user_add::pin_limits(status, &self.backend_of(line));
            input::check_pin(pin, limits)?;
        }
        Ok(None)
    }

    async fn enroll_all(
        &self,
        ctx: &Context,
        lines: &input::Lines,
        pins: &Pins,
        reporter: &mut Reporter,
    ) -> Result<(), Failure> {
        let mut client = ctx.client().await?;
        let mut codes: HashMap<String, usize> = HashMap::new();
        let mut daemon_gone: Option<Failure> = None;
        for (number, text) in lines {
            let number = *number;
            let line = match input::parse_line(text) {
                Ok(line) => line,
                Err(failure) => {
                    reporter.report(&LineReport::failed(number, None, &failure))?;
                    continue;
                }
            };
            if let Some(failure) = &daemon_gone {
                let report = LineReport {
                    reason: Some(failure.reason.as_str().to_string()),
                    message: Some("not tried: fleetkeyd went away; run the batch again".into()),
                    ..LineReport::new(number, line.hint.clone(), Status::Skipped)
                };
                reporter.report(&report)?;
                continue;
            }
            if let Some(first) = codes.get(&line.compact) {
                let report = LineReport::new(number, line.hint.clone(), Status::Skipped)
                    .with_message(format!("duplicate of line {first}"));
                reporter.report(&report)?;
                continue;
            }
            codes.insert(line.compact.clone(), number);
            let report = self
                .enroll_line(ctx, &mut client, &line, number, pins)
                .await;
            if report.reason.as_deref() == Some(Reason::DaemonUnreachable.as_str()) {
                daemon_gone = Some(Failure::new(Reason::DaemonUnreachable, ""));
            }
            reporter.report(&report)?;
        }
        Ok(())
    }

    /// Enrolls one line, or finds it done.
    async fn enroll_line(
        &self,
        ctx: &Context,
        client: &mut Client,
        line: &BatchLine,
        number: usize,
        pins: &Pins,
    ) -> LineReport {
        let backend = self.backend_of(line);
        let checked = client
            .check_add_user(CheckAddUserRequest {
                code: line.code.clone(),
                backend: backend.clone(),
            })
            .await
            .map(|r| r.into_inner().user)
            .map_err(|s| ctx.rpc_failure(s));
        let user = match checked {
            Ok(user) if !user.is_empty() => user,
            Ok(_) => match &line.hint {
                Some(hint) => hint.clone(),
                None => {
                    let failure = Failure::new(
                        Reason::Unsupported,
                        "fleetkeyd does not say whom the code enrolls (too old for add-batch)",
                    );
                    return LineReport::failed(number, None, &failure);
                }
            },
            Err(failure) => {
                let named = if failure.reason == Reason::AlreadyEnrolled {
                    failure.metadata.get("user").cloned().or(line.hint.clone())
                } else if failure.reason == Reason::CodeAlreadyUsed {
                    line.hint.clone()
                } else {
                    None
                };
                let Some(user) = named else {
                    return LineReport::failed(number, line.hint.clone(), &failure);
                };
                if self.is_enrolled(client, &user).await {
                    return LineReport::new(number, Some(user), Status::Done)
                        .with_message("already enrolled on this device");
                }
                // Maybe an enrollment still in progress: AddUser waits for
                // it and answers for what it left.
                user
            }
        };
        let Some(pin) = pins.get(&user) else {
            return LineReport::failed(number, Some(user.clone()), &no_pin(&user));
        };
        let added = client
            .add_user(AddUserRequest {
                code: line.code.clone(),
                pin: pin.to_string(),
                backend,
                reader: line.reader.clone(),
                slot: line.slot.clone(),
                require_pin_change: self.require_pin_change,
            })
            .await;
        match added {
            Ok(added) => LineReport::new(number, Some(added.into_inner().name), Status::Enrolled),
            Err(status) => {
                let failure = ctx.rpc_failure(status);
                if matches!(
                    failure.reason,
                    Reason::AlreadyEnrolled | Reason::CodeAlreadyUsed
                ) && self.is_enrolled(client, &user).await
                {
                    return LineReport::new(number, Some(user), Status::Done)
                        .with_message("already enrolled on this device");
                }
                LineReport::failed(number, Some(user), &failure)
            }
        }
    }

    /// Whether `user` is enrolled here and active (not pending).
    async fn is_enrolled(&self, client: &mut Client, user: &str) -> bool {
        client
            .get_user(GetUserRequest {
                name: user.to_string(),
            })
            .await
            .is_ok()
    }
}

fn no_pin(user: &str) -> Failure {
    Failure::new(
        Reason::InvalidArgument,
        format!("no PIN for user {user} in the PIN file"),
    )
    .with_hint("Add a line NAME<TAB>PIN for the user to the --pins file.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_outcomes() {
        let mut all = Summary::default();
        all.count(Status::Enrolled);
        all.count(Status::Done);
        all.count(Status::Skipped);
        assert!(all.outcome(false).is_none());
        let mut partial = all.clone();
        partial.count(Status::Failed);
        assert_eq!(partial.outcome(false).unwrap().reason, Reason::BatchPartial);
        let mut none = Summary::default();
        none.count(Status::Failed);
        none.count(Status::Skipped);
        assert_eq!(none.outcome(false).unwrap().reason, Reason::BatchFailed);
        let mut dry = Summary::default();
        dry.count(Status::Checked);
        dry.count(Status::Failed);
        assert_eq!(dry.outcome(true).unwrap().reason, Reason::BatchInvalid);
        assert_eq!(Reason::BatchPartial.exit_code(), 120);
        assert_eq!(Reason::BatchFailed.exit_code(), 121);
        assert_eq!(Reason::BatchInvalid.exit_code(), 122);
    }

    #[test]
    fn report_shapes() {
        let failure = Failure::new(Reason::CodeExpired, "code X expired\u{1b}[2J");
        let report = LineReport::failed(3, Some("alice".into()), &failure);
        assert_eq!(
            serde_json::to_value(&report).unwrap(),
            serde_json::json!({"line": 3, "user": "alice", "status": "failed",
                "reason": "CODE_EXPIRED", "message": "code X expired\u{1b}[2J"})
        );
        let text = report_text(&report);
        assert!(text.starts_with("line 3: alice: failed (CODE_EXPIRED): code X expired"));
        assert!(!text.contains('\u{1b}'));
        let done = LineReport::new(4, None, Status::Enrolled);
        assert_eq!(
            serde_json::to_value(&done).unwrap(),
            serde_json::json!({"line": 4, "user": null, "status": "enrolled"})
        );
    }
}
