/// experiment_1: does forcing the residual stream onto a discrete grid slow or stop learning?
/// The same decoder, task, initializations and data orders; only the quantization after every block differs.
module MechInterp.Analysis.Discretization.Experiment1

open System
open TorchSharp
open MechInterp.Hooks
open MechInterp.Model
open MechInterp.Analysis.Statistics
open MechInterp.Analysis.Residual
open MechInterp.Analysis.Residual.InductionRun
open MechInterp.Analysis.Discretization.Quantization

/// One arm of the experiment: no quantizer is the standard model.
type Variant = { Name: string; Quantizer: Quantizer option }

type Experiment1Settings =
    { Training: InductionSettings
      Seeds: int list
      /// The clamp range c of every quantizer (levels on [−c, c] per dimension).
      Range: float
      StraightThroughLevels: int list
      BlockedLevels: int list
      /// Loss threshold on the trailing mean of the training loss (window SmoothingWindow).
      Threshold: float
      SmoothingWindow: int }

/// What the residual analysis shows in one trained model, on its evaluation batch with its own hooks.
type RunAnalysis =
    { /// max |Σ components − final resid| / max |final resid|: 0 when the stream is a plain sum.
      DecompositionError: float
      BestPreviousToken: int * int * float
      BestInduction: int * int * float
      /// Logit-lens loss on the repeated half after each layer (label, loss).
      LogitLens: (string * float)[] }

type SeedRun =
    { Seed: int
      Run: InductionRunResult
      FinalLoss: float
      FinalRepeatedHalfLoss: float
      StepsToThreshold: int option
      Analysis: RunAnalysis }

type VariantResult =
    { Variant: Variant
      Runs: SeedRun list
      FinalLoss: Intervals.Summary
      /// Against the standard variant's final losses (None for the standard variant itself).
      VersusStandard: Significance.Comparison option }

type Experiment1Result =
    { Settings: Experiment1Settings
      Variants: VariantResult list
      Seconds: float }

let variants (s: Experiment1Settings) =
    [ yield { Name = "standard"; Quantizer = None }
      for k in s.StraightThroughLevels ->
          { Name = $"ste-k{k}"; Quantizer = Some { Levels = k; Range = s.Range; Gradient = StraightThrough } }
      for k in s.BlockedLevels ->
          { Name = $"no-ste-k{k}"; Quantizer = Some { Levels = k; Range = s.Range; Gradient = Blocked } } ]

let hooksOf (variant: Variant) (model: HookedTransformer) =
    match variant.Quantizer with
    | None -> [||]
    | Some q -> quantizeHooks q model

/// Decomposition error, best heads and logit lens of a trained model, run with the variant's hooks.
let analyse (s: InductionSettings) (variant: Variant) (model: HookedTransformer) (dataSeed: int) (snapshot: Snapshot) =
    use _scope = torch.NewDisposeScope()
    use _ = torch.no_grad()
    use batch = evalBatch s dataSeed
    let struct (_, cache) = model.RunWithCache(batch.Tokens, Decomposition.residualFilter model, hooksOf variant model)
    use cache = cache
    let parts = Decomposition.decomposeResid model cache
    let final = cache.[$"blocks.{s.Layers - 1}.hook_resid_post"]
    let err = (parts.Stack.sum(0L) - final).abs().max().item<float32>() / final.abs().max().item<float32>()
    let repeated = (task s).RepeatedHalfMask(int batch.Tokens.shape.[0])
    { DecompositionError = float err
      BestPreviousToken = HeadScores.best snapshot.PreviousToken
      BestInduction = HeadScores.best snapshot.Induction
      LogitLens = LogitAttribution.logitLensLoss model cache batch.Tokens repeated }

let runVariant (s: Experiment1Settings) (log: string -> unit) (variant: Variant) =
    let runs =
        [ for seed in s.Seeds ->
              let model, run = train s.Training seed seed (hooksOf variant)
              use model = model
              let last = List.last run.Snapshots
              let r =
                  { Seed = seed
                    Run = run
                    FinalLoss = last.Loss
                    FinalRepeatedHalfLoss = last.RepeatedHalfLoss
                    StepsToThreshold = stepsToThreshold s.SmoothingWindow s.Threshold run.Losses
                    Analysis = analyse s.Training variant model seed last }
              log (sprintf "  %-12s seed %d: final loss %.3f (repeated half %.3f), threshold at %s, %.1f s"
                       variant.Name seed r.FinalLoss r.FinalRepeatedHalfLoss
                       (r.StepsToThreshold |> Option.map string |> Option.defaultValue "never") run.Seconds)
              r ]
    runs

/// Runs every variant over every seed; `log` gets one line per run.
let run (s: Experiment1Settings) (log: string -> unit) =
    let clock = Diagnostics.Stopwatch.StartNew()
    let all = variants s |> List.map (fun v -> v, runVariant s log v)
    let standardLosses = all |> List.head |> snd |> List.map (fun r -> r.FinalLoss)
    { Settings = s
      Variants =
        [ for v, runs in all ->
              let losses = runs |> List.map (fun r -> r.FinalLoss)
              { Variant = v
                Runs = runs
                FinalLoss = Intervals.summarize losses
                VersusStandard =
                    if v.Quantizer.IsNone then None else Some(Significance.permutationTest standardLosses losses) } ]
      Seconds = clock.Elapsed.TotalSeconds }

/// Mean and 95% interval across seeds of the trailing-window training loss, every `stride` steps:
/// (steps, means, lows, highs).
let lossBand (window: int) (stride: int) (runs: SeedRun list) =
    let curves = runs |> List.map (fun r -> smoothed window r.Run.Losses) |> Array.ofList
    let n = curves |> Array.map Array.length |> Array.min
    let steps = [| for i in stride - 1 .. stride .. n - 1 -> i |]
    let summaries = steps |> Array.map (fun i -> Intervals.summarize (curves |> Array.map (fun c -> c.[i])))
    steps |> Array.map (fun i -> float (i + 1)),
    summaries |> Array.map (fun s -> s.Mean),
    summaries |> Array.map (fun s -> fst s.Ci95),
    summaries |> Array.map (fun s -> snd s.Ci95)
