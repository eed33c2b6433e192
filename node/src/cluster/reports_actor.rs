//! The actor that receives peers' [`Report`]s over actor sessions, and the sending side's
//! [`broadcast`]. One `ReportsActor` per node joins the process group [`REPORTS_GROUP`];
//! ractor_cluster advertises it to every peer's session, so a node reaches every peer's actor by
//! casting to the group's remote members. The actor also watches the group: when a peer's actor
//! joins it (a session came up), it sends that peer this node's latest report at once, so a node
//! that just started is heard from without waiting for the next report tick.
//!
//! A report crosses the session as bytes: one frame of `helixflow_runtime::frame` (protocol
//! version + bincode) in a cast of variant [`REPORT_VARIANT`]. The actor decodes it itself,
//! because ractor_cluster drops a message whose `Message::deserialize` fails without telling
//! anyone; here a report that does not decode is logged and counted
//! (`helixflow_actor_session_decode_errors_total{actor="reports"}`).
//!
//! What it does not know: which session a cast came from (ractor_cluster hands casts to the actor
//! without their sender), so it cannot check `report.node` against the session's peer the way
//! the old per-peer `Control` stream did. Sessions are only opened on QUIC streams whose peer the
//! transport authenticated, and `session` stops any whose ractor name differs from that peer;
//! what remains trusted is that a member of the cluster (a holder of a CA-signed certificate)
//! reports only for itself, the same trust Raft RPCs get.

use std::sync::Arc;

use helixflow_consensus::raft::NodeId;
use helixflow_runtime::frame::{self, FrameDecoder, FrameError};
use helixflow_runtime::metric_names;
use ractor::message::{BoxedDowncastErr, SerializedMessage};
use ractor::pg::GroupChangeMessage;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::Cluster;
use super::rpc::Report;

/// The process group every node's `ReportsActor` joins.
pub const REPORTS_GROUP: &str = "helixflow.reports";
/// The ractor variant name a report travels under.
pub const REPORT_VARIANT: &str = "report";
/// Largest encoded report: a few hundred bytes per served model in practice.
const MAX_REPORT_BYTES: usize = 1 << 20;

/// Arguments: the cluster whose `peers` the reports go to.
pub struct ReportsActor {
    pub cluster: Arc<Cluster>,
}

pub struct ReportsState {
    me: NodeId,
}

/// Why a message from a peer was dropped.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("report does not decode: {0}")]
    Decode(#[from] FrameError),
    #[error("report is not one whole frame")]
    NotOneFrame,
    #[error("a peer sent a report claiming to be this node ({node})")]
    ClaimsToBeMe { node: NodeId },
    #[error("message of a kind this actor does not take: {0}")]
    Unexpected(String),
}

/// The mailbox is fed by peers' sessions: each peer sends a report a few times a second and
/// handling one is a decode and a map insert, so it holds a handful at most. (ractor mailboxes
/// are unbounded; a peer flooding it would first have to hold a cluster certificate.)
pub enum ReportsMsg {
    /// A peer's report as it crossed the session: decoded by the handler.
    Report(Vec<u8>),
    /// A remote message this actor does not take (a call, another variant); logged, counted
    /// and dropped. A call's reply port is dropped with it, so the caller's call fails.
    Unexpected(String),
}

impl ractor::Message for ReportsMsg {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        match self {
            ReportsMsg::Report(args) => Ok(SerializedMessage::Cast {
                variant: REPORT_VARIANT.to_owned(),
                args,
                metadata: None,
            }),
            ReportsMsg::Unexpected(_) => Err(BoxedDowncastErr),
        }
    }

    /// Never fails: whatever arrives becomes a message the handler can count.
    fn deserialize(message: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        Ok(match message {
            SerializedMessage::Cast { variant, args, .. } if variant == REPORT_VARIANT => {
                ReportsMsg::Report(args)
            }
            SerializedMessage::Cast { variant, .. } => {
                ReportsMsg::Unexpected(format!("cast of variant {variant:?}"))
            }
            SerializedMessage::Call { variant, .. } => {
                ReportsMsg::Unexpected(format!("call of variant {variant:?}"))
            }
            SerializedMessage::CallReply(..) => ReportsMsg::Unexpected("a call reply".to_owned()),
        })
    }
}

/// Encodes `report` the way [`ReportsState::receive`] decodes it.
pub fn encode(report: &Report) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    frame::encode(report, MAX_REPORT_BYTES, &mut out)?;
    Ok(out)
}

/// Casts `report` to every peer's `ReportsActor` this node has a session with. A peer without a
/// session is skipped (its dialler is working on it); the next report supersedes this one.
pub fn broadcast(report: &Report) {
    send(report, ractor::pg::get_members(&REPORTS_GROUP.to_owned()));
}

/// Casts `report` to the remote ones among `members`.
fn send(report: &Report, members: Vec<ActorCell>) {
    let bytes = match encode(report) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = %e, "encoding this node's report");
            return;
        }
    };
    for member in members {
        if member.get_id().is_local() {
            continue;
        }
        if let Err(e) = member.send_message(ReportsMsg::Report(bytes.clone())) {
            tracing::debug!(actor = %member.get_id(), error = %e, "casting a report");
        }
    }
}

impl ReportsState {
    pub fn new(me: NodeId) -> ReportsState {
        ReportsState { me }
    }

    /// The report in `message`, if it is a well-formed report from another node.
    pub fn receive(&self, message: ReportsMsg) -> Result<Report, ReportError> {
        let bytes = match message {
            ReportsMsg::Report(bytes) => bytes,
            ReportsMsg::Unexpected(what) => return Err(ReportError::Unexpected(what)),
        };
        let mut decoder = FrameDecoder::new(MAX_REPORT_BYTES);
        decoder.push(&bytes);
        let report: Report = decoder.next_message()?.ok_or(ReportError::NotOneFrame)?;
        decoder.finish().map_err(|_| ReportError::NotOneFrame)?;
        if report.node == self.me {
            return Err(ReportError::ClaimsToBeMe { node: report.node });
        }
        Ok(report)
    }
}

impl Actor for ReportsActor {
    type Msg = ReportsMsg;
    type State = ReportsState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<ReportsMsg>,
        (): (),
    ) -> Result<ReportsState, ActorProcessingErr> {
        ractor::pg::join(REPORTS_GROUP.to_owned(), vec![myself.get_cell()]);
        ractor::pg::monitor(REPORTS_GROUP.to_owned(), myself.get_cell());
        Ok(ReportsState::new(self.cluster.me))
    }

    async fn post_stop(
        &self,
        myself: ActorRef<ReportsMsg>,
        _: &mut ReportsState,
    ) -> Result<(), ActorProcessingErr> {
        ractor::pg::demonitor(REPORTS_GROUP.to_owned(), myself.get_id());
        Ok(())
    }

    /// A peer's actor joined the group: its session is up; greet it with this node's report.
    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<ReportsMsg>,
        event: SupervisionEvent,
        _: &mut ReportsState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ProcessGroupChanged(GroupChangeMessage::Join(_, group, members)) =
            event
            && group == REPORTS_GROUP
        {
            send(&self.cluster.local_report(), members);
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<ReportsMsg>,
        message: ReportsMsg,
        state: &mut ReportsState,
    ) -> Result<(), ActorProcessingErr> {
        match state.receive(message) {
            Ok(report) => self.cluster.peers.heard(report),
            Err(e) => {
                tracing::warn!(error = %e, "dropped a message from a peer's actor session");
                metrics::counter!(metric_names::ACTOR_SESSION_DECODE_ERRORS, "actor" => "reports")
                    .increment(1);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use helixflow_actors::scheduler::ModelLoad;
    use ractor::Message;

    use super::*;

    fn report(node: NodeId) -> Report {
        Report {
            node,
            applied: 42,
            models: vec![ModelLoad::default()],
            draining: false,
        }
    }

    /// What the receiving side's actor gets for what the sending side cast.
    fn over_the_wire(message: ReportsMsg) -> ReportsMsg {
        ReportsMsg::deserialize(message.serialize().unwrap()).unwrap()
    }

    #[test]
    fn a_report_crosses_a_session_intact() {
        let sent = report(2);
        let message = over_the_wire(ReportsMsg::Report(encode(&sent).unwrap()));
        assert_eq!(ReportsState::new(1).receive(message).unwrap(), sent);
    }

    #[test]
    fn bad_bytes_are_errors_not_silence() {
        let state = ReportsState::new(1);
        let good = encode(&report(2)).unwrap();

        let mut other_version = good.clone();
        other_version[4] ^= 0xff;
        let mut trailing = good.clone();
        trailing.push(0);
        let mut garbage = good.clone();
        garbage.truncate(6);
        garbage[0] = 2;
        for bytes in [
            other_version,
            trailing,
            good[..good.len() - 1].to_vec(),
            garbage,
        ] {
            let message = over_the_wire(ReportsMsg::Report(bytes));
            assert!(
                matches!(
                    state.receive(message),
                    Err(ReportError::Decode(_) | ReportError::NotOneFrame)
                ),
                "accepted a malformed report"
            );
        }
    }

    #[test]
    fn other_messages_and_own_reports_are_refused() {
        let state = ReportsState::new(1);
        let unknown = ReportsMsg::deserialize(SerializedMessage::Cast {
            variant: "something-else".into(),
            args: encode(&report(2)).unwrap(),
            metadata: None,
        })
        .unwrap();
        assert!(matches!(
            state.receive(unknown),
            Err(ReportError::Unexpected(_))
        ));
        let mine = over_the_wire(ReportsMsg::Report(encode(&report(1)).unwrap()));
        assert!(matches!(
            state.receive(mine),
            Err(ReportError::ClaimsToBeMe { node: 1 })
        ));
    }
}
