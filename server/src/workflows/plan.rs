//! Where a workflow stands, worked out from what is known of its steps' tasks: a pure function,
//! so that any server may work it out again at any time (after a crash, a duplicate event, a
//! requeued dead letter) and reach the same answer. Only starting a step is remembered (its task
//! ids, or the refusal of its payload); every other state is read from the tasks each time.

use super::spec::Spec;
use app::model::{
    Status,
    workflow::{OnFailure, StepState, WorkflowStatus},
};

/// What is known of a step.
#[derive(Clone, Debug, PartialEq)]
pub enum Fact {
    /// No task was started for it.
    NotStarted,
    /// Its payload, built when it became ready, was refused: it failed without a task.
    Refused(String),
    /// Its tasks' statuses and errors (one per element of a map).
    Tasks(Vec<(Status, Option<String>)>),
}

/// The workflow's state, and the steps to start now.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Each step's state and error, in the definition's order.
    pub states: Vec<(StepState, Option<String>)>,
    /// The steps whose parents have all ended and that run now (marked `queued` in `states`).
    pub start: Vec<usize>,
    pub status: WorkflowStatus,
    /// The failed step that failed the workflow.
    pub failed_step: Option<usize>,
}

/// The state of a started step, from its tasks: failed as soon as one of them failed (a map
/// fails fast), succeeded once all did (a map over nothing at once).
fn started(tasks: &[(Status, Option<String>)]) -> (StepState, Option<String>) {
    if let Some((status, error)) = tasks.iter().find(|(s, _)| matches!(s, Status::Failed | Status::Cancelled))
    {
        let error = error.clone().unwrap_or_else(|| format!("its task was {}", status.as_str()));
        return (StepState::Failed, Some(error));
    }
    if tasks.iter().all(|(s, _)| *s == Status::Succeeded) {
        (StepState::Succeeded, None)
    } else if tasks.iter().any(|(s, _)| matches!(s, Status::Running | Status::Retrying | Status::Succeeded)) {
        (StepState::Running, None)
    } else {
        (StepState::Queued, None)
    }
}

/// Works out the workflow from `facts` (one per step); `cancelled`: someone cancelled it.
pub fn plan(spec: &Spec, facts: &[Fact], cancelled: bool) -> Plan {
    let steps = spec.steps();
    let mut states: Vec<Option<(StepState, Option<String>)>> = facts
        .iter()
        .map(|fact| match fact {
            Fact::NotStarted => None,
            Fact::Refused(error) => Some((StepState::Failed, Some(error.clone()))),
            Fact::Tasks(tasks) => Some(started(tasks)),
        })
        .collect();
    // A failure fails the workflow unless every step after it takes failures (`continue` or
    // `skip`); one with nothing after it always does.
    let failed_step = spec.order.iter().copied().find(|&i| {
        matches!(states[i], Some((StepState::Failed, _)))
            && (spec.children[i].is_empty()
                || spec.children[i].iter().any(|&c| steps[c].on_failure == OnFailure::Fail))
    });
    let mut start = Vec::new();
    for &i in &spec.order {
        if states[i].is_some() {
            continue;
        }
        let state = if cancelled || failed_step.is_some() {
            StepState::Cancelled
        } else {
            let parents: Vec<StepState> =
                spec.parents[i].iter().map(|&p| states[p].as_ref().expect("parents come first").0).collect();
            let failed = parents.iter().any(|s| matches!(s, StepState::Failed | StepState::Cancelled));
            let skipped = parents.contains(&StepState::Skipped);
            if parents.iter().any(|s| !s.has_ended()) {
                StepState::Waiting
            } else if (failed || skipped) && steps[i].on_failure != OnFailure::Continue {
                StepState::Skipped
            } else {
                start.push(i);
                StepState::Queued
            }
        };
        states[i] = Some((state, None));
    }
    let states: Vec<(StepState, Option<String>)> =
        states.into_iter().map(|s| s.expect("every step was worked out")).collect();
    let status = if cancelled {
        WorkflowStatus::Cancelled
    } else if failed_step.is_some() {
        WorkflowStatus::Failed
    } else if states.iter().all(|(s, _)| s.has_ended()) {
        WorkflowStatus::Succeeded
    } else {
        WorkflowStatus::Running
    };
    Plan { states, start, status, failed_step }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(steps: serde_json::Value) -> Spec {
        Spec::check(serde_json::from_value(json!({ "steps": steps })).unwrap()).unwrap()
    }

    fn diamond(on_failure: &str) -> Spec {
        spec(json!([
            {"id": "a", "kind": "echo"},
            {"id": "b", "kind": "echo", "after": ["a"]},
            {"id": "c", "kind": "echo", "after": ["a"]},
            {"id": "d", "kind": "echo", "after": ["b", "c"], "on_failure": on_failure,
             "payload": [{"$from": "b"}, {"$from": "c"}]},
        ]))
    }

    fn done() -> Fact {
        Fact::Tasks(vec![(Status::Succeeded, None)])
    }

    fn dead(error: &str) -> Fact {
        Fact::Tasks(vec![(Status::Failed, Some(error.into()))])
    }

    fn state_names(plan: &Plan) -> Vec<&'static str> {
        plan.states.iter().map(|(s, _)| s.as_str()).collect()
    }

    #[test]
    fn a_new_workflow_starts_its_roots_and_waits_for_the_rest() {
        let spec = diamond("fail");
        let plan =
            plan(&spec, &[Fact::NotStarted, Fact::NotStarted, Fact::NotStarted, Fact::NotStarted], false);
        assert_eq!(plan.start, vec![0]);
        assert_eq!(state_names(&plan), ["queued", "waiting", "waiting", "waiting"]);
        assert_eq!(plan.status, WorkflowStatus::Running);
    }

    #[test]
    fn a_step_starts_when_its_last_parent_ends_and_the_workflow_ends_with_the_last_step() {
        let spec = diamond("fail");
        let running = Fact::Tasks(vec![(Status::Running, None)]);
        let waiting = plan(&spec, &[done(), done(), running, Fact::NotStarted], false);
        assert!(waiting.start.is_empty());
        let ready = plan(&spec, &[done(), done(), done(), Fact::NotStarted], false);
        assert_eq!(ready.start, vec![3]);
        let over = plan(&spec, &[done(), done(), done(), done()], false);
        assert_eq!(over.status, WorkflowStatus::Succeeded);
    }

    #[test]
    fn fail_fails_the_workflow_naming_the_step_and_cancels_what_has_not_started() {
        let spec = diamond("fail");
        let running = Fact::Tasks(vec![(Status::Running, None)]);
        let plan = plan(&spec, &[done(), dead("boom"), running, Fact::NotStarted], false);
        assert_eq!(plan.status, WorkflowStatus::Failed);
        assert_eq!(plan.failed_step, Some(1));
        assert_eq!(plan.states[1], (StepState::Failed, Some("boom".into())));
        assert_eq!(state_names(&plan), ["succeeded", "failed", "running", "cancelled"]);
        assert!(plan.start.is_empty());
    }

    #[test]
    fn continue_runs_the_step_with_the_failure_and_the_workflow_goes_on() {
        let spec = diamond("continue");
        let plan = plan(&spec, &[done(), dead("boom"), done(), Fact::NotStarted], false);
        assert_eq!(plan.start, vec![3]);
        assert_eq!(plan.status, WorkflowStatus::Running);
    }

    #[test]
    fn skip_skips_the_step_and_the_steps_after_it_that_do_not_continue() {
        let spec = spec(json!([
            {"id": "a", "kind": "echo"},
            {"id": "b", "kind": "echo", "after": ["a"], "on_failure": "skip"},
            {"id": "c", "kind": "echo", "after": ["b"]},
            {"id": "d", "kind": "echo", "after": ["b"], "on_failure": "continue"},
        ]));
        let plan = plan(&spec, &[dead("boom"), Fact::NotStarted, Fact::NotStarted, Fact::NotStarted], false);
        assert_eq!(state_names(&plan), ["failed", "skipped", "skipped", "queued"]);
        assert_eq!(plan.start, vec![3]);
        assert_eq!(plan.status, WorkflowStatus::Running);
    }

    #[test]
    fn a_failed_last_step_fails_the_workflow() {
        let spec = diamond("fail");
        let plan = plan(&spec, &[done(), done(), done(), dead("late")], false);
        assert_eq!((plan.status, plan.failed_step), (WorkflowStatus::Failed, Some(3)));
    }

    #[test]
    fn a_refused_payload_is_a_failure_like_any_other() {
        let spec = diamond("fail");
        let plan = plan(&spec, &[done(), Fact::Refused("schema".into()), done(), Fact::NotStarted], false);
        assert_eq!(plan.status, WorkflowStatus::Failed);
        assert_eq!(plan.states[1].1.as_deref(), Some("schema"));
    }

    #[test]
    fn a_requeued_dead_step_resumes_the_workflow() {
        let spec = diamond("fail");
        let requeued = Fact::Tasks(vec![(Status::Queued, None)]);
        let plan = plan(&spec, &[done(), requeued, done(), Fact::NotStarted], false);
        assert_eq!(plan.status, WorkflowStatus::Running);
        assert_eq!(state_names(&plan), ["succeeded", "queued", "succeeded", "waiting"]);
    }

    #[test]
    fn a_map_fails_fast_and_succeeds_once_every_element_did() {
        let spec = spec(json!([{"id": "a", "kind": "echo"}]));
        let some = Fact::Tasks(vec![(Status::Succeeded, None), (Status::Queued, None)]);
        assert_eq!(plan(&spec, &[some], false).states[0].0, StepState::Running);
        let one_dead = Fact::Tasks(vec![(Status::Failed, Some("x".into())), (Status::Queued, None)]);
        assert_eq!(plan(&spec, &[one_dead], false).status, WorkflowStatus::Failed);
        assert_eq!(plan(&spec, &[Fact::Tasks(vec![])], false).status, WorkflowStatus::Succeeded);
    }

    #[test]
    fn a_cancelled_workflow_starts_nothing() {
        let spec = diamond("fail");
        let plan = plan(&spec, &[done(), Fact::NotStarted, Fact::NotStarted, Fact::NotStarted], true);
        assert!(plan.start.is_empty());
        assert_eq!(plan.status, WorkflowStatus::Cancelled);
        assert_eq!(state_names(&plan), ["succeeded", "cancelled", "cancelled", "cancelled"]);
    }
}
