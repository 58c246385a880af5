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
    onOneThread (fun () ->
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
          Seconds = clock.Elapsed.TotalSeconds })

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

/// Quick: small and short enough that both experiments fit the main job's minutes; Full: d_model 128, longer.
let quickSettings =
    { Training = { InductionStudy.quickSettings with Steps = 400; SnapshotEvery = 50 }
      Seeds = [ 0; 1; 2; 3; 4 ]
      Range = 1.0
      StraightThroughLevels = [ 2; 4; 16; 256 ]
      BlockedLevels = [ 16 ]
      Threshold = 3.0
      SmoothingWindow = 20 }

let fullSettings =
    { quickSettings with
        Training = { InductionStudy.fullSettings with Steps = 1500; SnapshotEvery = 100 }
        Seeds = [ 0 .. 9 ]
        BlockedLevels = [ 2; 4; 16; 256 ] }

/// The numbers of experiment1.json.
let toJson (r: Experiment1Result) : Text.Json.Nodes.JsonNode =
    let s = r.Settings
    let finite = InductionStudy.finite
    let head (l, h, score: float) = {| layer = l; head = h; score = finite score |}
    let variant (v: VariantResult) =
        let lo, hi = v.FinalLoss.Ci95
        let steps, means, lows, highs = lossBand s.SmoothingWindow 10 v.Runs
        {| name = v.Variant.Name
           levels = v.Variant.Quantizer |> Option.map (fun q -> q.Levels) |> Option.toNullable
           straight_through = v.Variant.Quantizer |> Option.map (fun q -> q.Gradient = StraightThrough) |> Option.toNullable
           seeds = v.Runs |> List.map (fun run -> run.Seed)
           final_loss = v.Runs |> List.map (fun run -> finite run.FinalLoss)
           final_loss_mean = finite v.FinalLoss.Mean
           final_loss_ci95 = [ finite lo; finite hi ]
           final_repeated_half_loss = v.Runs |> List.map (fun run -> finite run.FinalRepeatedHalfLoss)
           steps_to_threshold = v.Runs |> List.map (fun run -> Option.toNullable run.StepsToThreshold)
           versus_standard =
            v.VersusStandard
            |> Option.map (fun c -> {| difference = finite c.Difference; welch_t = finite c.WelchT; p_value = finite c.PValue; permutations = c.Permutations |})
            |> Option.toObj
           decomposition_error = v.Runs |> List.map (fun run -> finite run.Analysis.DecompositionError)
           best_induction_head = v.Runs |> List.map (fun run -> head run.Analysis.BestInduction)
           best_previous_token_head = v.Runs |> List.map (fun run -> head run.Analysis.BestPreviousToken)
           logit_lens_repeated_half_loss = v.Runs |> List.map (fun run -> InductionStudy.labelled run.Analysis.LogitLens)
           loss_curve =
            {| step = steps; mean = Array.map finite means; ci95_low = Array.map finite lows; ci95_high = Array.map finite highs |} |}
    let node =
        {| threshold = s.Threshold
           threshold_on = $"trailing {s.SmoothingWindow}-step mean of the training loss (all positions)"
           quantization =
            $"after every block, each residual dimension clamped to [-{s.Range}, {s.Range}] and rounded to k evenly spaced levels (endpoints included)"
           final_loss_is = "loss on the seed's fixed held-out batch after the last step, with the variant's quantization"
           significance = "exact two-sided permutation test of the difference of mean final loss against the standard variant"
           settings = InductionStudy.settingsRecord s.Training
           seconds = r.Seconds
           variants = r.Variants |> List.map variant |}
    match Text.Json.JsonSerializer.SerializeToNode node with
    | null -> invalidOp "the results serialized to null"
    | n -> n
