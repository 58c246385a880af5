/// How an experiment plugs into the main job: a name, the independent units its work splits into, and how their
/// partial results combine into its outputs.
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

/// One independent share of an experiment's work (a setting and a group of seeds trained as one batch): any
/// process can run it, and what it returns is all `Combine` needs of it.
type WorkUnit =
    { /// Unique within its experiment and the same on every machine: it names the unit in partial files and errors.
      Id: string
      /// The setting the unit trains, and its seeds: `merge` refuses a seed trained twice in one setting.
      Setting: string
      Seeds: int list
      /// The seconds the unit is expected to take, relative to the others: shards balance their shares by it
      /// (`Shards.assign`). A hint only: it never changes what the unit computes. `WorkUnit.create` sets 1.
      Cost: float
      /// Trains and measures; the partial result as JSON (`WorkUnit.create` serializes any F# value).
      Run: unit -> JsonNode }

/// An entry in the main job's experiment list. `Name` names the results file, so keep it a plain word.
/// `Units` lists the work at a scale (cheap: nothing trains until a unit runs); `Combine` receives every unit's
/// partial by id, whether they ran in this process or in shards on other machines.
type Experiment =
    { Name: string
      Description: string
      Units: Scale -> WorkUnit list
      Combine: Scale -> Map<string, JsonNode> -> ExperimentOutput }

module WorkUnit =
    /// A unit whose partial is any value `Partial` can write (records, unions, lists, arrays, matrices).
    let create (id: string) (setting: string) (seeds: int list) (run: unit -> 'T) : WorkUnit =
        { Id = id; Setting = setting; Seeds = seeds; Cost = 1.0; Run = fun () -> Partial.toNode (run ()) }

module Experiment =
    /// The id of a single-unit experiment's one unit.
    [<Literal>]
    let SingleUnit = "all"

    /// An experiment that is one unit: `run` does all its work and returns its outputs (a shard runs it whole).
    let single (name: string) (description: string) (run: Scale -> ExperimentOutput) : Experiment =
        { Name = name
          Description = description
          Units = fun scale -> [ WorkUnit.create SingleUnit name [] (fun () -> run scale) ]
          Combine = fun _ partials -> Partial.ofNode<ExperimentOutput> partials.[SingleUnit] }

    /// The experiment with each unit's cost from `cost scale unitId` (expected seconds), for balancing shards.
    let withCosts (cost: Scale -> string -> float) (e: Experiment) : Experiment =
        { e with Units = fun scale -> e.Units scale |> List.map (fun u -> { u with Cost = cost scale u.Id }) }

    /// Runs every unit in this process and combines them: the whole experiment, as the main job without shards does.
    let runAll (scale: Scale) (e: Experiment) : ExperimentOutput =
        e.Units scale |> List.map (fun u -> u.Id, u.Run()) |> Map.ofList |> e.Combine scale
