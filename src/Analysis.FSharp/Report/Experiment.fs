/// How an experiment plugs into the main job: a name, and a function from scale to its outputs.
namespace MechInterp.Analysis.Report

open System.Text.Json.Nodes

/// Quick: minutes on a laptop, same code path; Full: the paper-scale sweeps.
type Scale =
    | Quick
    | Full

/// An experiment's answer to its question, computed from its numbers: the report opens with these, and every
/// results file carries them as "answer".
type Answer =
    { Question: string
      /// One line: the answer.
      Verdict: string
      /// The numbers the verdict rests on.
      Evidence: string
      /// The key number with its 95% interval (or why it has none).
      KeyNumber: string
      /// Seeds per arm, runs trained in all, and how many of them converged.
      Seeds: int
      Runs: int
      Converged: int }

/// What one experiment run produces: its answer, report sections, and the numbers for artifacts/results/<name>.json.
type ExperimentOutput =
    { Answer: Answer
      Sections: ReportSection list
      Results: JsonNode }

/// An entry in the main job's experiment list. `Name` names the results file, so keep it a plain word.
type Experiment =
    { Name: string
      Description: string
      Run: Scale -> ExperimentOutput }
