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
      /// One batched run per seed; each cell keeps the seed with the lowest loss, as the paper does.
      Seeds: int64 list
      Training: Training }

type PhaseCell =
    { Importance: float
      Density: float
      Phase: Phase
      /// ‖W_1‖, ‖W_2‖ of the kept seed.
      FeatureNorms: float[]
      W: float[,]
      Loss: float }

/// Cells.[i, j]: importance i, density j.
type PhaseDiagramResult =
    { Settings: PhaseSettings
      Cells: PhaseCell[,]
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
    if s.Importances.Length = 0 || s.Densities.Length = 0 || s.Seeds.IsEmpty then
        invalidArg (nameof s) $"phase diagram has zero instances: {s.Importances.Length} importances × {s.Densities.Length} densities × {s.Seeds.Length} seeds"
    for d in s.Densities do
        if not (d >= 0.0 && d <= 1.0) then invalidArg (nameof s) $"density 1 − S = {d} puts the sparsity S = {1.0 - d} outside [0, 1]"
    for r in s.Importances do
        if not (r >= 0.0 && Double.IsFinite r) then invalidArg (nameof s) $"relative importance must be finite and non-negative, got {r}"

/// Trains importances × densities ReLU instances per seed in one batch and classifies every cell.
let run (log: string -> unit) (s: PhaseSettings) : PhaseDiagramResult =
    validate s
    let clock = Diagnostics.Stopwatch.StartNew()
    let grid = [| for r in s.Importances do for d in s.Densities -> r, d |]
    let config = ToyModelConfig(2, 1, grid.Length, ToyActivation.Relu)
    let rows = grid |> Array.map (fun (r, _) -> [| 1.0; r |])
    let sparsity = grid |> Array.map (fun (_, d) -> 1.0 - d)
    let runs =
        s.Seeds
        |> List.map (fun seed ->
            let result = ToyTrainer.Train(config, rows, sparsity, coreSettings s.Training seed (fun l -> log $"  phase diagram seed {seed}: {l}"))
            use model = result.Model
            Array.init grid.Length (fun k -> Metrics.ofRows (model.EmbeddingOf k), result.FinalLoss.[k]))
    let nd = s.Densities.Length
    let cells =
        Array2D.init s.Importances.Length nd (fun i j ->
            let k = i * nd + j
            let w, loss = runs |> List.map (fun run -> run.[k]) |> List.minBy snd
            { Importance = s.Importances.[i]; Density = s.Densities.[j]; Phase = classify w
              FeatureNorms = Metrics.featureNorms w; W = w; Loss = loss })
    { Settings = s; Cells = cells; Seconds = clock.Elapsed.TotalSeconds }
