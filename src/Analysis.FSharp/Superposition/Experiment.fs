/// "Features as directions": the toy-models-of-superposition experiment, its settings per scale,
/// its results file and its report section.
module MechInterp.Analysis.Superposition.Experiment

open System
open System.Threading.Tasks
open System.Text.Json.Nodes
open MechInterp.ToyModels
open MechInterp.Analysis.Report
open MechInterp.Analysis.Superposition.Sweep
open MechInterp.Analysis.Superposition.PhaseDiagram

/// The issue's densities 1 − S for the n = 20, m = 5 sweep.
let paperDensities = [ 1.0; 0.3; 0.1; 0.03; 0.01; 0.003; 0.001 ]

type SuperpositionConfig =
    { /// n = 20, m = 5, I_i = 0.7^i, ReLU and linear.
      Main: SweepSetting list
      /// n = 5, m = 2, I_i = 0.9^i: directions in the plane.
      Plane: SweepSetting
      /// n = 80, m = 20, I_i = 0.9^i: feature dimensionality.
      Dimensionality: SweepSetting
      Phase: PhaseSettings }

/// Everything the experiment trains. Full is the paper's optimiser, batch and 10,000 steps everywhere.
/// Quick keeps the optimiser, learning rate and the issue's densities but trims steps, grid sizes and (for
/// n = 80 only) the batch so the whole experiment fits the main job's three-minute budget on two busy cores.
let config (scale: Scale) : SuperpositionConfig =
    let quick = scale = Quick
    let training steps batch = { paperTraining with Steps = steps; BatchSize = batch; LogEvery = steps / 4 }
    let mainTraining = if quick then training 2_000 1024 else training 10_000 1024
    let main activation name =
        { Name = name; Features = 20; Hidden = 5; ImportanceDecay = 0.7; Activation = activation
          Densities = paperDensities; Seed = 0L; Training = mainTraining }
    { Main = [ main ToyActivation.Relu "relu-20-5"; main ToyActivation.Linear "linear-20-5" ]
      Plane =
        { Name = "relu-5-2"; Features = 5; Hidden = 2; ImportanceDecay = 0.9; Activation = ToyActivation.Relu
          Densities = paperDensities; Seed = 1L; Training = mainTraining }
      Dimensionality =
        { Name = "relu-80-20"; Features = 80; Hidden = 20; ImportanceDecay = 0.9; Activation = ToyActivation.Relu
          Densities = logSpace 1.0 0.001 (if quick then 8 else 30) |> List.ofArray
          Seed = 2L; Training = (if quick then training 1_000 512 else training 10_000 1024) }
      Phase =
        { Importances = logSpace 0.1 10.0 (if quick then 7 else 21)
          Densities = logSpace 0.01 1.0 (if quick then 7 else 21)
          Seeds = (if quick then [ 3L ] else [ 3L; 4L; 5L ])
          Training = (if quick then training 2_000 1024 else training 10_000 1024) } }

type SuperpositionResults =
    { Config: SuperpositionConfig
      Main: SweepResult list
      Plane: SweepResult
      Dimensionality: SweepResult
      Phase: PhaseDiagramResult }

/// Each run is single-threaded, so the independent runs go on parallel threads to keep every core busy.
/// Results do not depend on the scheduling: every run has its own seeded generators and dispose scopes.
let private train (log: string -> unit) (config: SuperpositionConfig) : SuperpositionResults =
    let gate = obj ()
    let log line = lock gate (fun () -> log line)
    let start (f: unit -> 'T) = Task.Run<'T>(Func<'T> f)
    let sweep (s: SweepSetting) =
        start (fun () ->
            log $"training {s.Name}: {s.Densities.Length} instances, {s.Training.Steps} steps, batch {s.Training.BatchSize}"
            let r = Sweep.run log s
            log $"  {s.Name} done in {r.Seconds:F1} s"
            r)
    // Longest first, so it is not left running alone at the end.
    let dims = sweep config.Dimensionality
    let phase =
        start (fun () ->
            let p = config.Phase
            log $"training phase diagram: {p.Importances.Length * p.Densities.Length} instances × {p.Seeds.Length} seeds, {p.Training.Steps} steps"
            let r = PhaseDiagram.run log p
            log $"  phase diagram done in {r.Seconds:F1} s"
            r)
    let main = config.Main |> List.map sweep
    let plane = sweep config.Plane
    // GetResult rethrows a run's own exception rather than an AggregateException.
    let await (t: Task<'T>) = t.GetAwaiter().GetResult()
    { Config = config; Main = main |> List.map await; Plane = await plane; Dimensionality = await dims; Phase = await phase }

/// Trains everything, each run on one libtorch thread; `log` receives progress lines.
let run (log: string -> unit) (config: SuperpositionConfig) : SuperpositionResults =
    // Validate every setting before the first minute of training is spent.
    for s in config.Main @ [ config.Plane; config.Dimensionality ] do validate s
    // Toy-model tensors are too small for intra-op threads to pay; on a shared machine libtorch's thread
    // barriers made a step 30× slower with 2 threads than with 1. The setting is restored afterwards.
    MechInterp.Settings.WithThreads(1, fun () -> train log config)

let private activationKey = function ToyActivation.Relu -> "relu" | _ -> "linear"

let private pointJson (p: SweepPoint) =
    Report.obj
        [ "density", Report.number p.Density
          "feature_norms", Report.numbers p.FeatureNorms
          "superposition", Report.numbers p.Superposition
          "dims_per_feature", Report.number p.DimsPerFeature
          "represented", Report.integer (int64 p.Represented)
          "feature_dimensionality", Report.numbers p.FeatureDimensionality
          "loss", Report.number p.Loss
          "W", Report.array [ for r in 0 .. Array2D.length1 p.W - 1 -> Report.numbers p.W.[r, *] ] ]

let private settingJson (sw: SweepResult) =
    let s = sw.Setting
    Report.obj
        [ "name", Report.text s.Name
          "n", Report.integer s.Features
          "m", Report.integer s.Hidden
          "importance_decay", Report.number s.ImportanceDecay
          "model", Report.text (activationKey s.Activation)
          "seed", Report.integer s.Seed
          "optimizer", Report.text "AdamW"
          "learning_rate", Report.number s.Training.LearningRate
          "weight_decay", Report.number s.Training.WeightDecay
          "steps", Report.integer s.Training.Steps
          "batch_size", Report.integer s.Training.BatchSize
          "seconds", Report.number sw.Seconds
          "points", Report.array (sw.Points |> List.map pointJson) ]

/// artifacts/results/superposition.json: the issue's schema plus losses, W, timings and optimiser settings.
let toJson (r: SuperpositionResults) : JsonNode =
    let pd = r.Phase
    let rows f = Report.array [ for i in 0 .. Array2D.length1 pd.Cells - 1 -> Report.array [ for j in 0 .. Array2D.length2 pd.Cells - 1 -> f pd.Cells.[i, j] ] ]
    Report.obj
        [ "settings", Report.array ((r.Main @ [ r.Plane; r.Dimensionality ]) |> List.map settingJson)
          "phase_diagram",
          Report.obj
              [ "importance", Report.numbers pd.Settings.Importances
                "density", Report.numbers pd.Settings.Densities
                "cells_index", Report.text "cells[i][j]: importance[i], density[j]; the phase of feature 2"
                "cells", rows (fun c -> Report.text (label c.Phase))
                "feature_norms", rows (fun c -> Report.numbers c.FeatureNorms)
                "seeds", Report.array (pd.Settings.Seeds |> List.map Report.integer)
                "steps", Report.integer pd.Settings.Training.Steps
                "batch_size", Report.integer pd.Settings.Training.BatchSize
                "seconds", Report.number pd.Seconds ] ]
