/// How an experiment plugs into the main job: a name, and a function from scale to its outputs.
namespace MechInterp.Analysis.Report

open System.Text.Json.Nodes

/// Quick: minutes on a laptop, same code path; Full: the paper-scale sweeps.
type Scale =
    | Quick
    | Full

/// What one experiment run produces: report sections, and the numbers for artifacts/results/<name>.json.
type ExperimentOutput =
    { Sections: ReportSection list
      Results: JsonNode }

/// An entry in the main job's experiment list. `Name` names the results file, so keep it a plain word.
type Experiment =
    { Name: string
      Description: string
      Run: Scale -> ExperimentOutput }
