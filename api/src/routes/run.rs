//! Running a request's [`Plan`]: admission and the jobs' dispatch together, then the whole
//! answer as one JSON body, or the SSE stream ([`super::sse`]).

use axum::Json;
use axum::response::{IntoResponse, Response};
use switchyard_openai::request::StreamOptions;
use switchyard_openai::{Answer, JobOutput, Plan, Reply};
use switchyard_schemas::{Lane, ModelCard};

use super::sse;
use crate::error::ApiError;
use crate::policy::Caller;
use crate::state::AppState;
use switchyard_client::JobHandle;

/// How the client wants its answer.
pub(crate) enum Delivery {
    /// One JSON body.
    Whole,
    /// SSE chunks; with `include_usage`, a last chunk holds the usage.
    Stream { include_usage: bool },
}

impl Delivery {
    pub(crate) fn of(stream: Option<bool>, options: Option<&StreamOptions>) -> Self {
        match stream {
            Some(true) => Delivery::Stream { include_usage: options.is_some_and(|o| o.include_usage) },
            _ => Delivery::Whole,
        }
    }
}

/// Admits the request against `card`'s limits while its jobs are submitted, and answers.
pub(crate) async fn run(state: AppState, caller: Caller, card: ModelCard, plan: Plan, delivery: Delivery) -> Result<Response, ApiError> {
    let Plan { jobs, estimate, reply } = plan;
    let model = reply.model();
    let submit = futures::future::try_join_all(
        jobs.into_iter()
            .map(|job| async { Ok::<_, ApiError>(state.jobs.submit_since(Lane::Interactive, model, job, caller.arrived).await?) }),
    );
    let (admission, handles) = state.gate.admit_and_dispatch(&caller, &card, estimate, submit).await?;
    let headers = admission.headers().clone();
    let response = match (delivery, reply) {
        (Delivery::Stream { include_usage }, Reply::Generation(reply)) => sse::respond(reply, handles, include_usage, admission).await?,
        (_, reply) => match whole(reply, handles).await {
            Ok(answer) => {
                admission.settle(answer.total_tokens());
                Json(answer).into_response()
            }
            // A request refused by its worker (context too long, …) produced nothing: no charge.
            Err(error) => {
                admission.settle(0);
                return Err(error);
            }
        },
    };
    Ok((headers, response).into_response())
}

async fn whole(reply: Reply, handles: Vec<JobHandle>) -> Result<Answer, ApiError> {
    let prompt_param = reply.prompt_param();
    let outputs = futures::future::try_join_all(handles.into_iter().map(|handle| collect(handle, prompt_param))).await?;
    reply.assemble(outputs).map_err(|missing| ApiError::Internal(missing.to_string()))
}

async fn collect(mut handle: JobHandle, prompt_param: &str) -> Result<JobOutput, ApiError> {
    let mut output = JobOutput::default();
    while !output.push(handle.next_output().await?, prompt_param)? {}
    Ok(output)
}
