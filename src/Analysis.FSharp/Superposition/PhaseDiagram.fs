/// The n = 2, m = 1 phase diagram: how the second feature is stored, over its relative importance × density.
module MechInterp.Analysis.Superposition.PhaseDiagram

open System
open MechInterp.ToyModels
open MechInterp.Analysis.Superposition.Sweep

/// What the model does with the second feature (importance r, against the first feature's 1).
type Phase =
    | NotRepresented
    | DedicatedDimension
    | Superposition

let label =
    function
    | NotRepresented -> "not represented"
    | DedicatedDimension -> "dedicated dimension"
    | Superposition -> "superposition"

type PhaseSettings =
    { /// Relative importance r of feature 2 (feature 1 has importance 1).
      Importances: float[]
      /// Density 1 − S, shared by both features.
      Densities: float[]
      /// Independent runs per cell (one batched model holds them all); each cell keeps the lowest-loss one, as the paper does.
      Replicates: int
      Seed: int64
      Training: Training }

type PhaseCell =
    { Importance: float
      Density: float
      Phase: Phase
      /// ‖W_1‖, ‖W_2‖ of the kept seed.
      FeatureNorms: float[]
      W: float[,]
      Loss: float
      /// Whether the kept run converged (learned, then flat).
      Converged: bool }

/// Cells.[i, j]: importance i, density j.
type PhaseDiagramResult =
    { Settings: PhaseSettings
      Cells: PhaseCell[,]
      StepsRun: int
      /// Runs (cells × replicates) that converged, kept or not.
      ConvergedRuns: int
      Seconds: float }

/// Feature 2 not represented when ‖W_2‖ ≤ 0.5; in superposition when feature 1 loads on its direction with
/// (Ŵ_2 · W_1)² > 0.25 (i.e. a represented feature 1 shares its dimension); else it has the dimension to itself.
let classify (w: float[,]) =
    let norms = Metrics.featureNorms w
    let sup = Metrics.superposition w
    if norms.[1] <= Metrics.representedThreshold then NotRepresented
    elif sup.[1] > Metrics.representedThreshold ** 2.0 then Superposition
    else DedicatedDimension

/// `count` values from `lo` to `hi`, evenly spaced on a log scale.
let logSpace (lo: float) (hi: float) (count: int) =
    if count < 1 then invalidArg (nameof count) $"count must be at least 1, got {count}"
    if not (lo > 0.0 && hi > 0.0) then invalidArg (nameof lo) $"log-spaced ends must be positive, got {lo} and {hi}"
    if count = 1 then [| lo |]
    else Array.init count (fun k -> 10.0 ** (log10 lo + (log10 hi - log10 lo) * float k / float (count - 1)))

let private validate (s: PhaseSettings) =
    if s.Importances.Length = 0 || s.Densities.Length = 0 || s.Replicates < 1 then
        invalidArg (nameof s) $"phase diagram has zero instances: {s.Importances.Length} importances × {s.Densities.Length} densities × {s.Replicates} replicates"
    for d in s.Densities do
        if not (d >= 0.0 && d <= 1.0) then invalidArg (nameof s) $"density 1 − S = {d} puts the sparsity S = {1.0 - d} outside [0, 1]"
    for r in s.Importances do
        if not (r >= 0.0 && Double.IsFinite r) then invalidArg (nameof s) $"relative importance must be finite and non-negative, got {r}"

/// Trains importances × densities × replicates ReLU instances as one batch and classifies every cell's kept run.
let run (log: string -> unit) (s: PhaseSettings) : PhaseDiagramResult =
    validate s
    let grid = [| for r in s.Importances do for d in s.Densities -> r, d |]
    let reps = s.Replicates
    let config = ToyModelConfig(2, 1, grid.Length * reps, ToyActivation.Relu)
    let rows = Array.init (grid.Length * reps) (fun k -> let r, _ = grid.[k / reps] in [| 1.0; r |])
    let sparsity = Array.init (grid.Length * reps) (fun k -> let _, d = grid.[k / reps] in 1.0 - d)
    let result = ToyTrainer.Train(config, rows, sparsity, coreSettings s.Training s.Seed (fun l -> log $"  phase diagram: {l}"))
    use model = result.Model
    let convergence = nonNull result.Convergence   // trained with a criterion
    let nd = s.Densities.Length
    let cells =
        Array2D.init s.Importances.Length nd (fun i j ->
            let cell = i * nd + j
            let kept = [ for r in 0 .. reps - 1 -> cell * reps + r ] |> List.minBy (fun k -> result.FinalLoss.[k])
            let w = Metrics.ofRows (model.EmbeddingOf kept)
            { Importance = s.Importances.[i]; Density = s.Densities.[j]; Phase = classify w
              FeatureNorms = Metrics.featureNorms w; W = w; Loss = result.FinalLoss.[kept]
              Converged = convergence.[kept].Converged })
    { Settings = s; Cells = cells; StepsRun = result.StepsRun
      ConvergedRuns = convergence |> Seq.filter (fun c -> c.Converged) |> Seq.length
      Seconds = result.Elapsed.TotalSeconds }
