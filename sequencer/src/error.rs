//! [`SeqError`], why a command was not applied, and its mappings: onto gRPC statuses (and back,
//! for a forwarded call's answer), from the log's [`ProposeError`] and [`ReadError`], from a command's failed
//! checks ([`Invalid`]), and from a proposal's outcome (`reply_of`).

use chat_log::{CommandOutcome, ProposalOutcome, ProposeError, ReadError, RejectCode, StoreError};
use chat_model::commands::Invalid;
use chat_proto::chat_v1::{self as pb, command_reply};
use chat_proto::LeaderHint;
use prost::Message;
use tonic::{Code, Status};

/// Why a command was not applied. Maps one to one onto gRPC status codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeqError {
    /// Refused, before proposing or deterministically at apply.
    #[error("{message}")]
    Rejected { code: RejectCode, message: String },
    /// No leader could take it before the deadline; `hint` is the last leader known.
    #[error("{message}")]
    Unavailable {
        message: String,
        hint: Option<LeaderHint>,
    },
    /// A stored record did not check (its crc32, or its decoding): DATA_LOSS, never mistaken
    /// for a passing failure.
    #[error("stored data is damaged: {0}")]
    DataLoss(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl SeqError {
    pub fn code(&self) -> Code {
        match self {
            SeqError::Rejected { code, .. } => match code {
                RejectCode::InvalidArgument => Code::InvalidArgument,
                RejectCode::NotFound => Code::NotFound,
                RejectCode::AlreadyExists => Code::AlreadyExists,
                RejectCode::PermissionDenied => Code::PermissionDenied,
                RejectCode::FailedPrecondition => Code::FailedPrecondition,
                RejectCode::ResourceExhausted => Code::ResourceExhausted,
                RejectCode::Aborted => Code::Aborted,
            },
            SeqError::Unavailable { .. } => Code::Unavailable,
            SeqError::DataLoss(_) => Code::DataLoss,
            SeqError::Internal(_) => Code::Internal,
        }
    }

    /// The error a forwarded call answered with, as if it had happened here.
    pub fn from_status(status: &Status) -> SeqError {
        let code = match status.code() {
            Code::InvalidArgument => RejectCode::InvalidArgument,
            Code::NotFound => RejectCode::NotFound,
            Code::AlreadyExists => RejectCode::AlreadyExists,
            Code::PermissionDenied => RejectCode::PermissionDenied,
            Code::FailedPrecondition => RejectCode::FailedPrecondition,
            Code::ResourceExhausted => RejectCode::ResourceExhausted,
            Code::Aborted => RejectCode::Aborted,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                return SeqError::Unavailable {
                    message: status.message().to_string(),
                    hint: LeaderHint::from_status(status),
                }
            }
            Code::DataLoss => return SeqError::DataLoss(status.message().to_string()),
            _ => return SeqError::Internal(status.message().to_string()),
        };
        SeqError::Rejected {
            code,
            message: status.message().to_string(),
        }
    }
}

impl From<SeqError> for Status {
    fn from(e: SeqError) -> Status {
        match &e {
            SeqError::Unavailable {
                hint: Some(hint), ..
            } => hint.to_status(e.code(), e.to_string()),
            _ => Status::new(e.code(), e.to_string()),
        }
    }
}

/// Mapped as `chat_log` maps it onto a status: not the leader and stopped are UNAVAILABLE (the
/// leader hint kept), and so is an overloaded partition (a retry may get in); a full disk RESOURCE_EXHAUSTED, an unknown partition NOT_FOUND.
impl From<ProposeError> for SeqError {
    fn from(e: ProposeError) -> SeqError {
        let message = e.to_string();
        match e {
            ProposeError::NotLeader(hint) => SeqError::Unavailable {
                message,
                hint: Some(hint),
            },
            ProposeError::Stopped { .. } | ProposeError::Overloaded { .. } => {
                SeqError::Unavailable {
                    message,
                    hint: None,
                }
            }
            ProposeError::DiskFull { .. } => SeqError::Rejected {
                code: RejectCode::ResourceExhausted,
                message,
            },
            ProposeError::UnknownPartition(_) => SeqError::Rejected {
                code: RejectCode::NotFound,
                message,
            },
        }
    }
}

/// A read of chat state failed: UNAVAILABLE when no replica answered, INTERNAL for a storage
/// error (a corrupt record, a disk error).
impl From<ReadError> for SeqError {
    fn from(e: ReadError) -> SeqError {
        match e {
            ReadError::Unavailable { .. } => SeqError::Unavailable {
                message: e.to_string(),
                hint: None,
            },
            ReadError::Store(e @ (StoreError::Corrupt(_) | StoreError::Decode { .. })) => {
                SeqError::DataLoss(e.to_string())
            }
            ReadError::Store(e) => SeqError::Internal(e.to_string()),
        }
    }
}

/// A command's checks refused it: INVALID_ARGUMENT.
impl From<Invalid> for SeqError {
    fn from(e: Invalid) -> SeqError {
        SeqError::Rejected {
            code: RejectCode::InvalidArgument,
            message: e.0,
        }
    }
}

/// The reply of the one command of a proposal, or why it was rejected at apply.
pub(crate) fn reply_of(outcome: ProposalOutcome) -> Result<pb::CommandReply, SeqError> {
    match outcome.outcomes.into_iter().next() {
        Some(outcome) => outcome_reply(outcome),
        None => Err(SeqError::Internal("no outcome for the command".into())),
    }
}

/// One applied command's reply, or why it was rejected.
pub(crate) fn outcome_reply(outcome: CommandOutcome) -> Result<pb::CommandReply, SeqError> {
    match outcome {
        CommandOutcome::Applied { reply, .. } => pb::CommandReply::decode(reply.as_slice())
            .map_err(|e| SeqError::Internal(format!("decode reply: {e}"))),
        CommandOutcome::Rejected { code, message } => Err(SeqError::Rejected { code, message }),
    }
}

/// A call's error as a [`pb::Refusal`], with the details a unary Submit would have carried
/// (a forwarded call's answer, a SendBatch item).
pub(crate) fn refusal(status: Status) -> pb::Refusal {
    pb::Refusal {
        code: status.code() as i32,
        message: status.message().to_string(),
        details: status.details().to_vec(),
    }
}

/// A [`pb::Refusal`] back as the error it was.
pub fn from_refusal(r: pb::Refusal) -> SeqError {
    SeqError::from_status(&Status::with_details(
        Code::from_i32(r.code),
        r.message,
        r.details.into(),
    ))
}

/// A reply of another kind than the command's.
pub(crate) fn unexpected(reply: command_reply::Kind) -> SeqError {
    SeqError::Internal(format!("unexpected reply {reply:?}"))
}
