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
open MechInterp.Analysis.Discretization.Codebook

/// How a variant discretizes the stream after every block.
type Discretizer =
    /// Each dimension on its own grid of k levels.
    | Grid of Quantizer
    /// The whole vector replaced by the nearest entry of a learned codebook.
    | Codebook of CodebookSettings
    /// Each dimension clamped to [−range, range], straight-through, no rounding: the grids' control.
    | Clamp of range: float

/// One arm of the experiment: no discretizer is the standard model.
type Variant = { Name: string; Discretizer: Discretizer option }

type Experiment1Settings =
    { Training: InductionSettings
      Seeds: int list
      /// The clamp range c of every quantizer (levels on [−c, c] per dimension).
      Range: float
      StraightThroughLevels: int list
      BlockedLevels: int list
      /// Whether to run the clamp-only control (the grids' clamp and straight-through gradient, no rounding).
      ClampOnly: bool
      /// Codebook sizes of the vector-quantized variants (commitment 0.25, EMA decay 0.99).
      CodebookSizes: int list
      /// Loss threshold on the trailing mean of the training loss (window SmoothingWindow).
      Threshold: float
      SmoothingWindow: int }

/// What the residual analysis shows in one trained model, on its evaluation batch with its own hooks.
type RunAnalysis =
    { /// max |Σ components − final resid| / max |final resid|: 0 when the stream is a plain sum.
      DecompositionError: float
      BestPreviousToken: int * int * float
      BestInduction: int * int * float
      BestLookBack: int * int * float
      BestShiftedInduction: int * int * float
      /// Logit-lens loss on the repeat after each layer (label, loss).
      LogitLens: (string * float)[]
      /// Codebook variants: per quantized hook, entries used and the perplexity of the assignments on the evaluation batch.
      CodebookUsage: (string * int * float) list }

type SeedRun =
    { Seed: int
      Run: InductionRunResult
      FinalLoss: float
      FinalRepeatLoss: float
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
    [ yield { Name = "standard"; Discretizer = None }
      for k in s.StraightThroughLevels ->
          { Name = $"ste-k{k}"; Discretizer = Some(Grid { Levels = k; Range = s.Range; Gradient = StraightThrough }) }
      for k in s.BlockedLevels ->
          { Name = $"no-ste-k{k}"; Discretizer = Some(Grid { Levels = k; Range = s.Range; Gradient = Blocked }) }
      if s.ClampOnly then yield { Name = "clamp-only"; Discretizer = Some(Clamp s.Range) }
      for k in s.CodebookSizes ->
          { Name = $"vq-{k}"; Discretizer = Some(Codebook { Size = k; Commitment = 0.25; Decay = 0.99 }) } ]

let isGrid (gradient: GradientPath) (v: Variant) =
    match v.Discretizer with
    | Some(Grid q) -> q.Gradient = gradient
    | _ -> false

let isCodebook (v: Variant) =
    match v.Discretizer with
    | Some(Codebook _) -> true
    | _ -> false

/// The variant's intervention on a new model, and its codebooks (to read usage from and dispose) if any.
let interventionOf (variant: Variant) (seed: int) (model: HookedTransformer) =
    match variant.Discretizer with
    | None -> noIntervention, None
    | Some(Grid q) -> hooksOnly (quantizeHooks q model), None
    | Some(Clamp range) -> hooksOnly (clampHooks range model), None
    | Some(Codebook c) ->
        let codebooks = attach c seed model
        { Hooks = codebooks.Hooks; ExtraLoss = codebooks.CommitmentLoss }, Some codebooks

/// Decomposition error, best heads and logit lens of a trained model, run with the variant's hooks.
let analyse (s: InductionSettings) (intervention: Intervention) (codebooks: CodebookIntervention option)
            (model: HookedTransformer) (dataSeed: int) (snapshot: Snapshot) =
    use _scope = torch.NewDisposeScope()
    use _ = torch.no_grad()
    use batch = evalBatch s dataSeed
    codebooks |> Option.iter (fun c -> for _, q in c.Quantizers do q.ResetUsage())
    let struct (_, cache) = model.RunWithCache(batch.Tokens, Decomposition.residualFilter model, intervention.Hooks)
    use cache = cache
    let parts = Decomposition.decomposeResid model cache
    let final = cache.[$"blocks.{s.Layers - 1}.hook_resid_post"]
    let err = (parts.Stack.sum(0L) - final).abs().max().item<float32>() / final.abs().max().item<float32>()
    let repeated = MechInterp.Data.InductionTask.RepeatMask batch
    { DecompositionError = float err
      BestPreviousToken = HeadScores.best snapshot.PreviousToken
      BestInduction = HeadScores.best snapshot.Induction
      BestLookBack = HeadScores.best snapshot.LookBack
      BestShiftedInduction = HeadScores.best snapshot.ShiftedInduction
      LogitLens = LogitAttribution.logitLensLoss model cache batch.Tokens repeated
      CodebookUsage =
        match codebooks with
        | None -> []
        | Some c -> [ for name, q in c.Quantizers -> (let used, perplexity = q.Usage() in name, used, perplexity) ] }

/// Trains and analyses one variant on one seed.
let runOne (s: Experiment1Settings) (log: string -> unit) (variant: Variant) (seed: int) =
    let made = ref None
    let model, run =
        train s.Training seed seed (fun m -> let i, c = interventionOf variant seed m in made.Value <- Some(i, c); i)
    use model = model
    let intervention, codebooks = made.Value.Value
    use _codebooks = match codebooks with Some c -> (c :> IDisposable) | None -> { new IDisposable with member _.Dispose() = () }
    let last = List.last run.Snapshots
    let r =
        { Seed = seed
          Run = run
          FinalLoss = last.Loss
          FinalRepeatLoss = last.RepeatLoss
          StepsToThreshold = stepsToThreshold s.SmoothingWindow s.Threshold run.Losses
          Analysis = analyse s.Training intervention codebooks model seed last }
    log (sprintf "  %-12s seed %d: final loss %.3f (repeat %.3f), threshold at %s, %.1f s"
             variant.Name seed r.FinalLoss r.FinalRepeatLoss
             (r.StepsToThreshold |> Option.map string |> Option.defaultValue "never") run.Seconds)
    r

/// Runs every variant over every seed, `workers` runs at a time (each on one libtorch thread; runs share
/// nothing, so the results do not depend on the worker count); `log` gets one line per run.
let runWith (workers: int) (s: Experiment1Settings) (log: string -> unit) =
    if workers < 1 then invalidArg (nameof workers) $"workers must be at least 1, got {workers}"
    onOneThread (fun () ->
        let clock = Diagnostics.Stopwatch.StartNew()
        let jobs = [| for v in variants s do for seed in s.Seeds -> v, seed |]
        let results = Array.zeroCreate jobs.Length
        Threading.Tasks.Parallel.For(0, jobs.Length, Threading.Tasks.ParallelOptions(MaxDegreeOfParallelism = workers),
                                     fun i -> let v, seed = jobs.[i] in results.[i] <- runOne s log v seed) |> ignore
        let all = variants s |> List.map (fun v -> v, [ for i in 0 .. jobs.Length - 1 do if fst jobs.[i] = v then results.[i] ])
        let standardLosses = all |> List.head |> snd |> List.map (fun r -> r.FinalLoss)
        { Settings = s
          Variants =
            [ for v, runs in all ->
                  let losses = runs |> List.map (fun r -> r.FinalLoss)
                  { Variant = v
                    Runs = runs
                    FinalLoss = Intervals.summarize losses
                    VersusStandard =
                        if v.Discretizer.IsNone then None else Some(Significance.permutationTest standardLosses losses) } ]
          Seconds = clock.Elapsed.TotalSeconds })

/// runWith one worker per core (Settings.Threads: MECHINTERP_THREADS, or all cores).
let run (s: Experiment1Settings) (log: string -> unit) = runWith (max 1 MechInterp.Settings.Threads) s log

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

/// Quick: short enough that both experiments fit the main job's minutes — 500 steps, before the induction
/// phase change (step ~1,200 at this size), so it compares early learning only; Full: d_model 128 and long
/// enough for induction heads to form, with the threshold set below the pre-induction plateau.
let quickSettings =
    { Training = { InductionStudy.quickSettings with Steps = 500; SnapshotEvery = 50 }
      Seeds = [ 0; 1; 2; 3; 4 ]
      Range = 1.0
      StraightThroughLevels = [ 2; 4; 16; 256 ]
      BlockedLevels = [ 16 ]
      ClampOnly = true
      CodebookSizes = [ 256 ]
      Threshold = 4.0
      SmoothingWindow = 20 }

let fullSettings =
    { quickSettings with
        Training = { InductionStudy.fullSettings with Steps = 2000; SnapshotEvery = 100 }
        CodebookSizes = [ 256; 4096 ]
        Threshold = 3.3 }

/// The numbers of experiment1.json.
let toJson (r: Experiment1Result) : Text.Json.Nodes.JsonNode =
    let s = r.Settings
    let finite = InductionStudy.finite
    let head (l, h, score: float) = {| layer = l; head = h; score = finite score |}
    let variant (v: VariantResult) =
        let lo, hi = v.FinalLoss.Ci95
        let steps, means, lows, highs = lossBand s.SmoothingWindow 10 v.Runs
        {| name = v.Variant.Name
           kind = (match v.Variant.Discretizer with None -> "none" | Some(Grid _) -> "grid" | Some(Codebook _) -> "codebook" | Some(Clamp _) -> "clamp")
           levels = (match v.Variant.Discretizer with Some(Grid q) -> Nullable q.Levels | _ -> Nullable())
           codebook_size = (match v.Variant.Discretizer with Some(Codebook c) -> Nullable c.Size | _ -> Nullable())
           straight_through = (match v.Variant.Discretizer with Some(Grid q) -> Nullable(q.Gradient = StraightThrough) | Some(Codebook _) | Some(Clamp _) -> Nullable true | None -> Nullable())
           codebook_usage =
            v.Runs |> List.map (fun run -> run.Analysis.CodebookUsage |> List.map (fun (hook, used, perplexity) -> {| hook = hook; entries_used = used; perplexity = finite perplexity |}))
           seeds = v.Runs |> List.map (fun run -> run.Seed)
           final_loss = v.Runs |> List.map (fun run -> finite run.FinalLoss)
           final_loss_mean = finite v.FinalLoss.Mean
           final_loss_ci95 = [ finite lo; finite hi ]
           final_repeat_loss = v.Runs |> List.map (fun run -> finite run.FinalRepeatLoss)
           steps_to_threshold = v.Runs |> List.map (fun run -> Option.toNullable run.StepsToThreshold)
           versus_standard =
            v.VersusStandard
            |> Option.map (fun c -> {| difference = finite c.Difference; welch_t = finite c.WelchT; p_value = finite c.PValue; permutations = c.Permutations |})
            |> Option.toObj
           decomposition_error = v.Runs |> List.map (fun run -> finite run.Analysis.DecompositionError)
           best_induction_head = v.Runs |> List.map (fun run -> head run.Analysis.BestInduction)
           best_previous_token_head = v.Runs |> List.map (fun run -> head run.Analysis.BestPreviousToken)
           best_look_back_head = v.Runs |> List.map (fun run -> head run.Analysis.BestLookBack)
           best_shifted_induction_head = v.Runs |> List.map (fun run -> head run.Analysis.BestShiftedInduction)
           logit_lens_repeat_loss = v.Runs |> List.map (fun run -> InductionStudy.labelled run.Analysis.LogitLens)
           loss_curve =
            {| step = steps; mean = Array.map finite means; ci95_low = Array.map finite lows; ci95_high = Array.map finite highs |} |}
    let node =
        {| threshold = s.Threshold
           threshold_on = $"trailing {s.SmoothingWindow}-step mean of the training loss (all positions)"
           quantization =
            $"grid: after every block, each residual dimension clamped to [-{s.Range}, {s.Range}] and rounded to k evenly spaced levels (endpoints included); clamp: the same clamp and straight-through gradient without rounding; codebook: after every block, each position's vector replaced by the nearest of K entries (EMA-updated, decay 0.99, initialized from the first batch), straight-through gradient, commitment loss 0.25 * mse(x, sg(q)) added to the gradient (not to the reported loss)"
           final_loss_is = "loss on the seed's fixed held-out batch after the last step, with the variant's quantization"
           significance = "exact two-sided permutation test of the difference of mean final loss against the standard variant"
           settings = InductionStudy.settingsRecord s.Training
           seconds = r.Seconds
           variants = r.Variants |> List.map variant |}
    match Text.Json.JsonSerializer.SerializeToNode node with
    | null -> invalidOp "the results serialized to null"
    | n -> n
