//! Where a session tells the world how it is doing: the log, the node's status record
//! (`amlx-agent status`) and, in Azure ML / MLflow runs, a run tag.

use crate::publish::{
    MlflowTags, SessionState, StatusFile, StatusRecord, TagPublisher, session_ended_tag_value,
    session_tag_key, session_tag_value,
};
use crate::role::ProcessEnv;

use super::{DebugMode, SessionSpec};

/// A new status record for `spec`'s session, waiting for its debugger.
pub(super) fn new_record(spec: &SessionSpec) -> StatusRecord {
    let mut record = StatusRecord::new(spec.holder_pid, spec.port, spec.mode, spec.endpoint_text());
    record.rank = spec.rank;
    record.local_rank = spec.local_rank;
    record.warning = spec.warning.clone();
    record
}

/// Publishes state changes; lives in the sidecar (the one process that owns the record;
/// should the sidecar die, its keeper adopts the record).
#[derive(Debug)]
pub struct Reporter {
    state: Option<(SessionState, Option<String>)>,
    mode: DebugMode,
    endpoint: String,
    status: Option<StatusFile>,
    tags: Option<TagPublisher>,
    /// Leave the record when the sidecar ends before the step (see [`Reporter::keep_record`]).
    keep_record: bool,
    /// A post-mortem session: waiting is shown as `post-mortem`, with the crash.
    crash: Option<String>,
}

impl Reporter {
    /// Creates the status record and, when MLflow variables are set, the tag publisher.
    /// Both are best effort: a failure is one warning, never a reason to stop.
    /// Must run inside a Tokio runtime (the tag publisher spawns a task).
    pub fn start(spec: &SessionSpec) -> Reporter {
        let endpoint = spec.endpoint_text();
        let status = match crate::publish::state_dir(spec.state_dir.as_deref(), &ProcessEnv) {
            Ok(dir) => {
                let mut record = new_record(spec);
                // Only the sidecar starts a reporter: these are its and its keeper's.
                record.sidecar_pid = Some(std::process::id());
                record.keeper_pid = super::sidecar::keeper_pid();
                StatusFile::create(&dir, record)
                    .map_err(|err| tracing::warn!("no status record for this session: {err:#}"))
                    .ok()
            }
            Err(err) => {
                tracing::warn!("no status record for this session: {err:#}");
                None
            }
        };
        let tags = MlflowTags::from_env(&ProcessEnv).and_then(|tags| {
            let key = session_tag_key(spec.rank, &spec.hostname, spec.port);
            TagPublisher::spawn(tags, key)
                .map_err(|err| tracing::warn!("no MLflow run tag for this session: {err:#}"))
                .ok()
        });
        Reporter {
            state: None,
            mode: spec.mode,
            endpoint,
            status,
            tags,
            keep_record: false,
            crash: spec.post_mortem.as_ref().map(super::PostMortem::describe),
        }
    }

    /// The state last recorded (`None` before the first).
    pub fn state(&self) -> Option<SessionState> {
        self.state.as_ref().map(|(state, _)| *state)
    }

    /// Records a state change (repeats of the same state and reason are ignored).
    pub fn set(&mut self, state: SessionState, reason: Option<&str>) {
        let crashed;
        let (state, reason) = match (&self.crash, state) {
            (Some(crash), SessionState::WaitingForDebugger) => {
                crashed = match reason {
                    Some(reason) => format!("{crash}; {reason}"),
                    None => crash.clone(),
                };
                (SessionState::PostMortem, Some(crashed.as_str()))
            }
            _ => (state, reason),
        };
        let next = (state, reason.map(str::to_owned));
        if self.state.as_ref() == Some(&next) {
            return;
        }
        self.log_and_record(state, reason);
        if let Some(tags) = &self.tags {
            tags.publish(session_tag_value(&self.endpoint, self.mode, state, reason));
        }
        self.state = Some(next);
    }

    /// The sidecar ends but the step runs on (undebugged): [`Reporter::finish`] leaves
    /// the last state in the record, held by the step's PID, so `amlx-agent status`
    /// shows it (and why) until the step is gone, then `ended`.
    pub fn keep_record(&mut self) {
        self.keep_record = true;
    }

    /// The session is over: the log and the status record say `ended` (the record is
    /// then removed); the run tag says `ended` *and* the last state with its reason
    /// (`state=ended last=timed-out reason=…`), since after the job the tag is all that
    /// is left to tell what happened. The tag is sent bounded by the publisher's timeout.
    /// With [`Reporter::keep_record`] the record and the tag keep the last state.
    pub async fn finish(mut self) {
        let last = self.state.take();
        if self.keep_record {
            // Dropping the StatusFile would remove the record; readers judge it by its
            // holder's PID and start time, and the next session's create prunes it.
            std::mem::forget(self.status.take());
        } else {
            self.log_and_record(SessionState::Ended, None);
        }
        if let Some(tags) = self.tags.take() {
            if !self.keep_record {
                let last = last
                    .as_ref()
                    .map(|(state, reason)| (*state, reason.as_deref()));
                tags.publish(session_ended_tag_value(&self.endpoint, self.mode, last));
            }
            tags.finish().await;
        }
    }

    /// The log line and the status record for a state change.
    fn log_and_record(&mut self, state: SessionState, reason: Option<&str>) {
        match reason {
            Some(reason) => tracing::info!(state = %state, "debug session {state}: {reason}"),
            None => tracing::info!(state = %state, "debug session {state}"),
        }
        if let Some(status) = &mut self.status
            && let Err(err) = status.set_state(state, reason)
        {
            tracing::warn!("could not update the status record: {err:#}");
        }
    }
}
